"""Lexical guard for the semantic tier: catches the near-misses embeddings blur.

Sentence embeddings put "is port 22 open" and "is port 22 closed" (cosine ~0.90),
or "alarm at 7" and "alarm at 8", next to each other. No threshold separates those
from true paraphrases, so a semantic match is refused when the two texts disagree
on negation, on the numbers they contain (digits or words), or on a pair of
opposite words. Pure:
text in, reason out.
"""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:[.,:]\d+)*")
# Spelled-out numbers count as numbers: "alarm at two pm" is not "alarm at three pm".
# "one" is left out: it is as often a pronoun ("which one", "one of my lights").
_NUMBER_WORDS = frozenset(
    "zero two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety "
    "hundred thousand million billion half quarter".split()
)
_NEGATIONS = frozenset(
    "not no never none nobody nothing nowhere neither nor cannot without n't".split()
)
# Each pair: the words of one side never paraphrase the other's.
_OPPOSITES = [
    ("open", "closed"), ("open", "close"), ("on", "off"), ("enable", "disable"), ("enabled", "disabled"),
    ("increase", "decrease"), ("up", "down"), ("true", "false"), ("before", "after"), ("buy", "sell"),
    ("add", "remove"), ("start", "stop"), ("allow", "deny"), ("allowed", "denied"), ("accept", "reject"),
    ("maximum", "minimum"), ("max", "min"), ("higher", "lower"), ("more", "less"), ("import", "export"),
    ("upload", "download"), ("input", "output"), ("inside", "outside"), ("win", "lose"), ("lock", "unlock"),
    ("encrypt", "decrypt"), ("login", "logout"), ("connect", "disconnect"), ("deposit", "withdraw"),
    ("debit", "credit"), ("receive", "send"), ("received", "sent"), ("incoming", "outgoing"),
    ("first", "last"), ("early", "late"), ("cheap", "expensive"), ("hot", "cold"), ("left", "right"),
    ("north", "south"), ("east", "west"), ("yesterday", "tomorrow"), ("today", "tomorrow"),
    ("today", "yesterday"), ("always", "never"), ("all", "none"), ("success", "failure"),
    ("succeed", "fail"), ("valid", "invalid"), ("legal", "illegal"), ("possible", "impossible"),
    ("safe", "unsafe"), ("public", "private"), ("subscribe", "unsubscribe"), ("install", "uninstall"),
    ("include", "exclude"), ("minimum", "maximum"), ("over", "under"), ("above", "below"),
    ("positive", "negative"), ("plus", "minus"), ("asc", "desc"), ("ascending", "descending"),
    ("am", "pm"), ("morning", "evening"), ("morning", "night"), ("weekday", "weekend"),
]
# Share of (non-negation) words two texts must have in common for a negation flip to count.
_NEGATION_OVERLAP = 0.5
_OPPOSITE_OF: dict[str, set[str]] = {}
for _a, _b in _OPPOSITES:
    _OPPOSITE_OF.setdefault(_a, set()).add(_b)
    _OPPOSITE_OF.setdefault(_b, set()).add(_a)


def _tokens(text: str) -> list[str]:
    words = []
    for token in _WORD.findall(text.casefold().replace("’", "'")):
        if token.endswith("n't"):
            words.extend((token[:-3], "n't"))
        else:
            words.append(token)
    return words


def _numbers(tokens: list[str]) -> Counter[str]:
    return Counter(t.replace(",", "") for t in tokens if t[0].isdigit() or t in _NUMBER_WORDS)


def conflict(query: str, candidate: str) -> str | None:
    """Why `candidate`'s answer must not serve `query` although their embeddings are close,
    or None when nothing lexical speaks against it."""
    a, b = _tokens(query), _tokens(candidate)
    if any(t in _NEGATIONS for t in a) != any(t in _NEGATIONS for t in b):
        # A negation flip in an otherwise near-identical sentence inverts it; between
        # differently worded sentences ("still haven't got my card" / "where is my
        # card") it is only phrasing, and the embedding judges better.
        rest_a, rest_b = set(a) - _NEGATIONS, set(b) - _NEGATIONS
        if len(rest_a & rest_b) >= _NEGATION_OVERLAP * len(rest_a | rest_b):
            return "negation"
    if _numbers(a) != _numbers(b):
        return "numbers"
    words_a, words_b = set(a), set(b)
    for word in words_a - words_b:
        for opposite in _OPPOSITE_OF.get(word, ()):
            if opposite in words_b and opposite not in words_a:
                return f"opposites: {word}/{opposite}"
    return None
