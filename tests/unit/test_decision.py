"""The hit decision, table-driven: each row says why the verdict is what it is."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from semcache.decision import BELOW_THRESHOLD, NO_CANDIDATE, THRESHOLD, Candidate, decide
from semcache.v1.records_pb2 import EntryRecord


def _candidate(entry_id: int, query: str, similarity: float) -> Candidate:
    return Candidate(entry_id, EntryRecord(query=query), similarity)


PORT_OPEN = _candidate(1, "is port 22 open", 0.95)
PORT_CLOSED = _candidate(2, "is port 22 closed", 0.94)
RESET = _candidate(3, "how do I reset my password", 0.93)
PORT_OPEN_NOW = _candidate(6, "is port 22 open right now", 0.93)
FAR = _candidate(4, "what is the weather in Tampa", 0.40)


@pytest.mark.parametrize(
    "reason,candidates,threshold,guard_text,hit,best,guard_reason,decided_by",
    [
        ("no candidates at all", [], 0.9, "q", None, None, "", NO_CANDIDATE),
        ("the best is at the threshold: a hit", [RESET], 0.93, "", 3, 0.93, "", THRESHOLD),
        ("the best is under the threshold: a miss that still reports it", [FAR], 0.9, "", None, 0.40, "", BELOW_THRESHOLD),
        ("the guard refuses the best, the next one is the answer",
         [PORT_CLOSED, PORT_OPEN_NOW], 0.9, "is port 22 open", 6, 0.94, "opposites: open/closed", THRESHOLD),
        ("every refusal is tried past; the first reason is the one reported",
         [PORT_CLOSED, RESET, PORT_OPEN_NOW], 0.9, "is port 22 open", 6, 0.94, "opposites: open/closed", THRESHOLD),
        ("the guard refuses the best and the rest are under the threshold",
         [PORT_CLOSED, FAR], 0.9, "is port 22 open", None, 0.94, "opposites: open/closed", BELOW_THRESHOLD),
        ("the guard refuses every candidate", [PORT_CLOSED], 0.9, "is port 22 open", None, 0.94,
         "opposites: open/closed", NO_CANDIDATE),
        ("no guard text: the guard is off", [PORT_CLOSED], 0.9, "", 2, 0.94, "", THRESHOLD),
        ("a candidate without a stored query is not guarded", [_candidate(5, "", 0.97)], 0.9, "is port 22 open",
         5, 0.97, "", THRESHOLD),
        ("the same question passes the guard", [PORT_OPEN], 0.9, "is port 22 open", 1, 0.95, "", THRESHOLD),
    ],
)
def test_decide(reason, candidates, threshold, guard_text, hit, best, guard_reason, decided_by):
    verdict = decide(candidates, threshold, guard_text)
    assert (verdict.hit.entry_id if verdict.hit else None) == hit, reason
    assert verdict.best_similarity == best, reason
    assert verdict.guard_reason == guard_reason, reason
    assert verdict.decided_by == decided_by, reason


def test_decide_reads_no_further_than_it_needs():
    read: list[int] = []

    def stream() -> Iterator[Candidate]:
        for candidate in (RESET, PORT_OPEN, FAR):
            read.append(candidate.entry_id)
            yield candidate

    assert decide(stream(), 0.9, "").hit is RESET
    assert read == [3]  # the storage fetches more candidates only when they are needed
