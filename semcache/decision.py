"""The hit decision: given a Lookup's live candidates, best first, is one of them a hit?

This is the one place that decides; the verifier and feedback plug in here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from semcache.guard import conflict
from semcache.v1.records_pb2 import EntryRecord

# Verdict.decided_by
EXACT = "exact"
THRESHOLD = "threshold"  # a candidate at or above the threshold that the guard let through
BELOW_THRESHOLD = "below_threshold"  # the best remaining candidate was under the threshold
NO_CANDIDATE = "no_candidate"  # none left (every one refused by the guard, or none at all)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A live entry of the Lookup's partition and its cosine similarity to the query."""

    entry_id: int
    record: EntryRecord
    similarity: float


@dataclasses.dataclass(frozen=True)
class Verdict:
    hit: Candidate | None
    best_similarity: float | None  # the best live candidate's, for misses; None when there was none
    guard_reason: str  # why the guard refused a candidate at or above the threshold ("" when none)
    decided_by: str


def decide(candidates: Iterable[Candidate], threshold: float, guard_text: str) -> Verdict:
    """The first candidate at or above the threshold that the lexical guard lets through.

    candidates: live ones in descending similarity, consumed only as far as needed.
    guard_text: the query, when the lexical guard applies ("" turns it off).
    """
    best: float | None = None
    guard_reason = ""
    for candidate in candidates:
        if best is None:
            best = candidate.similarity
        if candidate.similarity < threshold:
            return Verdict(None, best, guard_reason, BELOW_THRESHOLD)
        record = candidate.record
        reason = conflict(guard_text, record.query) if guard_text and record.query else None
        if reason is not None:
            guard_reason = guard_reason or reason
            continue
        return Verdict(candidate, best, guard_reason, THRESHOLD)
    return Verdict(None, best, guard_reason, NO_CANDIDATE)
