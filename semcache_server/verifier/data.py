"""Training pairs for the verifier: labeled pair files, negatives made from them
(negations, word swaps), and hard negatives mined from replay streams: a query's
nearest neighbours by the embedder that have another answer, exactly the cache's
failure mode."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from semcache_server.bench import datasets


@dataclasses.dataclass(frozen=True)
class TrainingPair:
    a: str
    b: str
    label: float  # 1: the same question (may share an answer); 0: must not; between: a teacher's P(same)
    kind: str


def load_pair_files(paths: Iterable[Path], limit_per_file: int = 0, seed: int = 0) -> list[TrainingPair]:
    """Every pair of each file (or a seeded sample of limit_per_file)."""
    out: list[TrainingPair] = []
    for path in paths:
        pairs = datasets.load_pairs(path, limit_per_file or None, seed)
        out += [TrainingPair(p.a, p.b, int(p.label), p.kind or ("paraphrase" if p.label else "negative")) for p in pairs]
    return out


_AUXILIARIES = re.compile(
    r"\b(is|are|was|were|can|could|will|would|should|do|does|did|has|have|had|must|may)\b", re.IGNORECASE
)


def negated(text: str) -> str | None:
    """The text with its first auxiliary verb negated ("is X" -> "is not X"), or None."""
    match = _AUXILIARIES.search(text)
    if match is None:
        return None
    after = text[match.end():]
    if re.match(r"\s+(not|n't)\b", after, re.IGNORECASE):  # already negative: make it positive
        return text[:match.end()] + re.sub(r"^\s+(not|n't)\b", "", after, count=1, flags=re.IGNORECASE)
    return text[:match.end()] + " not" + after


_WORD = re.compile(r"[A-Za-z]{3,}")
_STOP = frozenset([
    "the", "and", "for", "you", "your", "with", "what", "how", "can", "does", "from", "have", "this", "that",
    "when", "where", "which", "who", "why", "are", "was", "will", "would", "could", "should", "into", "about",
    "there", "their", "them", "they", "then", "than", "been", "being", "also", "just",
])


def swapped(text: str, rng: random.Random) -> str | None:
    """Two different content words of the text exchanged ("flights from Boston to Tampa" ->
    "flights from Tampa to Boston"), or None when it has fewer than two."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(text) if m.group().lower() not in _STOP]
    if len(words) < 2:
        return None
    (s1, e1), (s2, e2) = sorted(rng.sample(words, 2))
    first, second = text[s1:e1], text[s2:e2]
    if first.lower() == second.lower():
        return None
    return text[:s1] + second + text[e1:s2] + first + text[e2:]


def synthetic_negatives(pairs: Sequence[TrainingPair], count: int, seed: int) -> list[TrainingPair]:
    """Up to `count` negation and `count` word-swap negatives, made from the pairs' texts."""
    rng = random.Random(seed)
    texts = sorted({t for p in pairs for t in (p.a, p.b)})
    rng.shuffle(texts)
    out: list[TrainingPair] = []
    made = {"synthetic_negation": 0, "synthetic_swap": 0}
    for text in texts:
        if made["synthetic_negation"] < count and (other := negated(text)) and other != text:
            out.append(TrainingPair(text, other, 0, "synthetic_negation"))
            made["synthetic_negation"] += 1
        if made["synthetic_swap"] < count and (other := swapped(text, rng)):
            out.append(TrainingPair(text, other, 0, "synthetic_swap"))
            made["synthetic_swap"] += 1
        if all(n >= count for n in made.values()):
            break
    return out


def mined_pairs(
    replay_paths: Iterable[Path], embed, per_query: int = 2, limit_per_file: int = 0, seed: int = 0,
    min_similarity: float = 0.5,
) -> list[TrainingPair]:
    """For each replay query: its nearest neighbours (by `embed`, L2-normalized vectors)
    with another answer key (label 0, "mined_hard_negative") and with the same one
    (label 1, "mined_positive"), at most per_query of each, at cosine >= min_similarity."""
    out: list[TrainingPair] = []
    for path in replay_paths:
        queries = datasets.load_replay(path, limit_per_file or None, seed)
        texts = [q.text for q in queries]
        keys = np.array([q.answer_key for q in queries])
        vectors = np.asarray(embed(texts), dtype=np.float32)
        for start in range(0, len(texts), 1024):
            block = vectors[start:start + 1024] @ vectors.T
            for row, similarities in enumerate(block):
                i = start + row
                similarities[i] = -1.0
                order = np.argsort(-similarities)[:64]
                negatives = [j for j in order if keys[j] != keys[i] and similarities[j] >= min_similarity][:per_query]
                positives = [j for j in order if keys[j] == keys[i] and similarities[j] >= min_similarity][:per_query]
                out += [TrainingPair(texts[i], texts[j], 0, "mined_hard_negative") for j in negatives]
                out += [TrainingPair(texts[i], texts[j], 1, "mined_positive") for j in positives]
    return out


def write_pairs(pairs: Iterable[TrainingPair], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps({"a": p.a, "b": p.b, "label": p.label, "kind": p.kind}, ensure_ascii=False) + "\n")
