"""Single flight: the first leased miss of a question gets a lease; concurrent leased
misses of the same question wait for the leaseholder's Store and are answered from it.

A question is (partition, request key, normalized query); with coalesce = "semantic",
a waiting Lookup also joins a lease whose question its vector matches at the
namespace's threshold. A lease ends when a Store of its question commits, when its
holder releases it (the LLM call failed), or `lease_seconds` after it was granted
(the holder died or gave up). Waiters then look up again: a stored answer is a hit,
otherwise one of them takes the lease over.

Waiting occupies a gRPC worker thread, so at most `max_waiters` wait at once; one
more misses at once, without a lease, and computes as it would without coalescing.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections.abc import Callable

import numpy as np

from semcache_server.partition import PartitionKey

# (partition, request key's exact suffix, normalized query)
Question = tuple[PartitionKey, str, str]
STORED, RELEASED, EXPIRED = "stored", "released", "expired"


@dataclasses.dataclass(eq=False)
class Lease:
    id: str
    question: Question
    vector: np.ndarray | None  # for semantic coalescing
    expires_at: float  # time.monotonic()
    ended: threading.Event = dataclasses.field(default_factory=threading.Event)
    outcome: str = ""


@dataclasses.dataclass(frozen=True)
class Claim:
    lease: Lease
    mine: bool  # True: the caller holds it and must Store or release


class LeaseTable:
    def __init__(self, lease_seconds: float, max_waiters: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.lease_seconds = lease_seconds
        self.max_waiters = max_waiters
        self._clock = clock
        self._lock = threading.Lock()
        self._by_question: dict[Question, Lease] = {}
        self._by_id: dict[str, Lease] = {}
        # (partition, key suffix) -> its leases, for semantic coalescing.
        self._by_scope: dict[tuple[PartitionKey, str], dict[str, Lease]] = {}
        self._waiters = 0
        # Counters for Stats and metrics.
        self.granted = 0
        self.coalesced = 0
        self.expired = 0
        self.refused_waits = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_id)

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {
                "active": len(self._by_id), "granted": self.granted, "coalesced": self.coalesced,
                "expired": self.expired, "refused_waits": self.refused_waits,
            }

    def claim(self, question: Question, vector: np.ndarray | None, semantic_threshold: float | None) -> Claim:
        """The live lease on this question (or, with semantic_threshold, on a question
        whose vector this one matches), else a new lease that the caller holds."""
        with self._lock:
            self._expire_locked()
            held = self._by_question.get(question)
            if held is None and semantic_threshold is not None and vector is not None:
                held = self._similar_locked(question, vector, semantic_threshold)
            if held is not None:
                return Claim(held, mine=False)
            lease = Lease(secrets.token_hex(12), question, vector, self._clock() + self.lease_seconds)
            self._by_question[question] = lease
            self._by_id[lease.id] = lease
            self._by_scope.setdefault(question[:2], {})[lease.id] = lease
            self.granted += 1
            return Claim(lease, mine=True)

    def wait(self, lease: Lease, until: float) -> bool:
        """Wait (until `until`, time.monotonic()) for the lease to end. True when it ended
        (stored, released or expired), False when the wait ran out or was refused."""
        with self._lock:
            if self._waiters >= self.max_waiters:
                self.refused_waits += 1
                return False
            self._waiters += 1
        try:
            while True:
                now = self._clock()
                timeout = min(until, lease.expires_at) - now
                if timeout <= 0 or lease.ended.wait(timeout):
                    break
        finally:
            with self._lock:
                self._waiters -= 1
        if lease.ended.is_set():
            return True
        with self._lock:
            if self._clock() >= lease.expires_at:
                self._end_locked(lease, EXPIRED)
                return True
        return False

    def complete(self, question: Question, lease_id: str = "") -> None:
        """A Store of this question committed: end its lease (and the one named, if
        another), waking the waiters."""
        with self._lock:
            lease = self._by_question.get(question)
            if lease is not None:
                self._end_locked(lease, STORED)
            named = self._by_id.get(lease_id) if lease_id else None
            if named is not None:
                self._end_locked(named, STORED)

    def release(self, lease_id: str, namespace: str) -> bool:
        """End a lease without a Store; False when it had ended or is another namespace's."""
        with self._lock:
            lease = self._by_id.get(lease_id)
            if lease is None or lease.question[0].namespace != namespace:
                return False
            self._end_locked(lease, RELEASED)
            return True

    def note_coalesced(self) -> None:
        with self._lock:
            self.coalesced += 1

    def _similar_locked(self, question: Question, vector: np.ndarray, threshold: float) -> Lease | None:
        best, best_similarity = None, threshold
        for lease in self._by_scope.get(question[:2], {}).values():
            if lease.vector is None:
                continue
            similarity = float(lease.vector @ vector)
            if similarity >= best_similarity:
                best, best_similarity = lease, similarity
        return best

    def _expire_locked(self) -> None:
        """Every lease lives lease_seconds, so _by_id (insertion-ordered) is in expiry order."""
        now = self._clock()
        while self._by_id:
            lease = next(iter(self._by_id.values()))
            if lease.expires_at > now:
                return
            self._end_locked(lease, EXPIRED)

    def _end_locked(self, lease: Lease, outcome: str) -> None:
        if self._by_id.pop(lease.id, None) is None:
            return
        if self._by_question.get(lease.question) is lease:
            del self._by_question[lease.question]
        scope = self._by_scope.get(lease.question[:2])
        if scope is not None:
            scope.pop(lease.id, None)
            if not scope:
                del self._by_scope[lease.question[:2]]
        if outcome == EXPIRED:
            self.expired += 1
        lease.outcome = outcome
        lease.ended.set()
