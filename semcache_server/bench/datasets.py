"""Labeled paraphrase data: `*.pairs.jsonl` (a, b, label) and `*.replay.jsonl` (text, answer_key)."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

PAIRS = "pairs"
REPLAY = "replay"


@dataclasses.dataclass(frozen=True)
class Pair:
    a: str
    b: str
    label: int  # 1: b may be answered with a's response; 0: it must not
    kind: str = ""


@dataclasses.dataclass(frozen=True)
class Query:
    text: str
    answer_key: str  # two queries may share an answer exactly when their keys are equal


def detect_mode(path: Path) -> str:
    """pairs or replay, from the file name, else from the first record's keys."""
    name = path.name
    if name.endswith(".pairs.jsonl"):
        return PAIRS
    if name.endswith(".replay.jsonl"):
        return REPLAY
    with path.open(encoding="utf-8") as f:
        first = json.loads(f.readline())
    if {"a", "b", "label"} <= first.keys():
        return PAIRS
    if {"text", "answer_key"} <= first.keys():
        return REPLAY
    raise ValueError(f"{path}: neither pairs (a, b, label) nor replay (text, answer_key) records")


def dataset_name(path: Path) -> str:
    """'banking77/dev.pairs' for .../banking77/dev.pairs.jsonl."""
    stem = path.name.removesuffix(".jsonl")
    return f"{path.parent.name}/{stem}" if path.parent.name else stem


def _records(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_pairs(path: Path, limit: int | None = None, seed: int = 0) -> list[Pair]:
    """All pairs, or a seeded random sample of `limit` (files are often ordered by kind)."""
    pairs = [Pair(r["a"], r["b"], int(r["label"]), r.get("kind", "")) for r in _records(path)]
    if limit is not None and limit < len(pairs):
        pairs = random.Random(seed).sample(pairs, limit)
    return pairs


def load_replay(path: Path, limit: int | None = None, seed: int = 0) -> list[Query]:
    """The query stream in a seeded shuffled order, cut to `limit`."""
    queries = [Query(r["text"], str(r["answer_key"])) for r in _records(path)]
    random.Random(seed).shuffle(queries)
    return queries if limit is None else queries[:limit]
