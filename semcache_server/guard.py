"""Lexical guard for the semantic tier: catches the near-misses embeddings blur.

Sentence embeddings put "is port 22 open" and "is port 22 closed" (cosine ~0.90),
or "alarm at 7" and "alarm at 8", next to each other. No threshold separates those
from true paraphrases, so a semantic match is refused when the two texts disagree
on negation, on the numbers they contain (digits or words), or on a pair of
opposite words. Negation is counted as polarity: each negation word and each
prefix that negates a word the other text has plain ("unhealthy" against
"healthy") turns the sentence over once, so "not healthy" matches "unhealthy"
but not "not unhealthy". Pure: text in, reason out.
"""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:[.,:]\d+)*")
# Spelled-out numbers count as numbers: "alarm at two pm" is not "alarm at three pm".
# "one" is left out: it is as often a pronoun ("which one", "one of my lights").
_NUMBER_WORDS = frozenset([
    "zero", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
    "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    "hundred", "thousand", "million", "billion", "half", "quarter",
])
_NEGATIONS = frozenset(
    ["not", "no", "never", "none", "nobody", "nothing", "nowhere", "neither", "nor", "cannot", "without", "n't"]
)
# A word made of one of these and a word of the other text negates that word.
_NEGATING_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non")
_MIN_NEGATED_STEM = 4  # "unit" is not "un" + "it"
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
    ("same", "different"), ("similar", "different"), ("identical", "different"), ("common", "rare"),
    ("major", "minor"), ("single", "multiple"), ("most", "least"), ("more", "fewer"), ("many", "few"),
    ("increase", "reduce"), ("increased", "decreased"), ("increases", "decreases"), ("high", "low"),
    ("highest", "lowest"), ("large", "small"), ("big", "small"), ("larger", "smaller"), ("long", "short"),
    ("longer", "shorter"), ("old", "new"), ("old", "young"), ("older", "newer"), ("fast", "slow"),
    ("faster", "slower"), ("easy", "hard"), ("easy", "difficult"), ("good", "bad"), ("best", "worst"),
    ("better", "worse"), ("full", "empty"), ("rich", "poor"), ("strong", "weak"), ("male", "female"),
    ("men", "women"), ("man", "woman"), ("present", "absent"), ("agree", "disagree"), ("appear", "disappear"),
    ("approve", "reject"), ("approved", "rejected"), ("support", "oppose"), ("rise", "fall"),
    ("enter", "exit"), ("arrival", "departure"), ("arrive", "depart"), ("internal", "external"),
    ("domestic", "international"), ("pass", "fail"), ("passed", "failed"),
    ("borrow", "lend"), ("buyer", "seller"), ("bought", "sold"), ("employer", "employee"), ("past", "future"),
    ("previous", "next"), ("last", "next"), ("begin", "end"), ("start", "end"), ("top", "bottom"),
    ("upper", "lower"), ("permanent", "temporary"), ("natural", "artificial"), ("real", "fake"),
    ("sometimes", "always"), ("rarely", "often"), ("never", "often"),
]
# Share of (non-negation) words two texts must have in common for a negation flip to count.
_NEGATION_OVERLAP = 0.5
_OPPOSITE_OF: dict[str, set[str]] = {}
for _a, _b in _OPPOSITES:
    _OPPOSITE_OF.setdefault(_a, set()).add(_b)
    _OPPOSITE_OF.setdefault(_b, set()).add(_a)


def _tokens(text: str) -> list[str]:
    words: list[str] = []
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
    words_a, words_b = set(a), set(b)
    stems_a, prefixed_a = _without_negating_prefixes(words_a, words_b)
    stems_b, prefixed_b = _without_negating_prefixes(words_b, words_a)
    if _polarity_flips(a, b, prefixed_a + prefixed_b):
        # Opposite polarity. Flipped in an otherwise near-identical sentence, it inverts
        # the sentence; between differently worded sentences ("still haven't got my
        # card" / "where is my card") it is only phrasing, and the embedding judges better.
        rest_a, rest_b = stems_a - _NEGATIONS, stems_b - _NEGATIONS
        if len(rest_a & rest_b) >= _NEGATION_OVERLAP * len(rest_a | rest_b):
            return "negation"
    if _numbers(a) != _numbers(b):
        return "numbers"
    for word in words_a - words_b:
        for opposite in _OPPOSITE_OF.get(word, ()):
            if opposite in words_b and opposite not in words_a:
                return f"opposites: {word}/{opposite}"
    return None


def _polarity_flips(a: list[str], b: list[str], prefixed: int) -> bool:
    """Whether the two token lists say opposite things by an odd number of negations."""
    return bool((sum(t in _NEGATIONS for t in a) + sum(t in _NEGATIONS for t in b) + prefixed) % 2)


def opposite_polarity(query: str, candidate: str) -> bool:
    """Whether one text negates (an odd number of times more) what the other says, however
    differently worded. conflict() refuses only near-identical sentences; this tells the
    decision to let the verifier read a pair whose cosine is high, since cosine barely
    moves with a "not"."""
    return _opposite_polarity(_tokens(query), _tokens(candidate))


def _opposite_polarity(a: list[str], b: list[str]) -> bool:
    words_a, words_b = set(a), set(b)
    prefixed = _without_negating_prefixes(words_a, words_b)[1] + _without_negating_prefixes(words_b, words_a)[1]
    return _polarity_flips(a, b, prefixed)


def _without_negating_prefixes(words: set[str], other: set[str]) -> tuple[set[str], int]:
    """`words` with each negating prefix on a word of `other` taken off ("unfair" -> "fair"
    when the other text says "fair"), and how many were taken off."""
    stems, taken = set(), 0
    for word in words:
        stem = next(
            (
                word[len(prefix):] for prefix in _NEGATING_PREFIXES
                if word.startswith(prefix) and len(word) - len(prefix) >= _MIN_NEGATED_STEM
                and word[len(prefix):] in other and word not in other
            ),
            None,
        )
        stems.add(stem or word)
        taken += stem is not None
    return stems, taken


# Texts this long or longer (in words) can be reorderings of each other; shorter ones
# are too short for word order to carry meaning the embedding misses.
_MIN_REORDERED_WORDS = 4
# Words one text may have that the other lacks, and still be "the same words": a share of
# the longer text, at least this many.
_REORDERED_SLACK_SHARE, _REORDERED_MIN_SLACK = 0.25, 1


def near_copy(query: str, candidate: str) -> bool:
    """Whether the two texts are (nearly) the same words, in any order, but not the same
    text: one or a few words swapped in ("prevent" / "aggravate", "in" / "outside of"), or
    the same words reordered. In a sentence of many words one changed word moves the
    embedding little, so its cosine stays high whether or not the meaning changed."""
    return _near_copy(_tokens(query), _tokens(candidate))


def _near_copy(a: list[str], b: list[str]) -> bool:
    if a == b or min(len(a), len(b)) < _MIN_REORDERED_WORDS:
        return False
    count_a, count_b = Counter(a), Counter(b)
    unshared = sum(((count_a - count_b) + (count_b - count_a)).values())
    return unshared <= max(_REORDERED_MIN_SLACK, int(_REORDERED_SLACK_SHARE * max(len(a), len(b))))


def cosine_is_blind(query: str, candidate: str) -> bool:
    """Pairs whose cosine is high whether or not they ask the same: nearly the same words
    (a word or a few changed, or the order: near_copy), or one negating the other
    (opposite_polarity). Above the threshold, the verifier reads them. Tokenizes each
    text once."""
    a, b = _tokens(query), _tokens(candidate)
    return _near_copy(a, b) or _opposite_polarity(a, b)
