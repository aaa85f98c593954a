"""The hit and counter ledger: lookup and removal counters (per partition and in total),
hits and sliding-TTL extensions not yet written to LMDB, and the LFU policy they feed.

One lock (`lock`) guards all of it, the eviction policy included; it is taken after
the storage's write lock, never before.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

from semcache_server import ttl
from semcache_server.entries import entry_bytes
from semcache_server.eviction import EvictionPolicy
from semcache_server.partition_registry import LivePartition, PartitionRegistry
from semcache_server.v1.records_pb2 import EntryRecord, PartitionRecord

# count_lookup outcomes
MISS = "miss"
EXACT_HIT = "exact_hits"
SEMANTIC_HIT = "semantic_hits"


@dataclasses.dataclass
class PendingWrites:
    """What a stats flush writes to LMDB, taken from the ledger in one step."""

    hits: dict[int, tuple[int, float, float | None]]  # entry id -> (hits, last hit time, LFU score)
    expiries: dict[int, float]  # entry id -> expiry extended by sliding TTL
    partitions: list[tuple[int, PartitionRecord]]  # counters of partitions changed since the last flush
    totals: bytes  # the serialized server totals

    def __bool__(self) -> bool:
        return bool(self.hits or self.expiries or self.partitions)


class Ledger:
    def __init__(self, policy: EvictionPolicy) -> None:
        self.lock = threading.Lock()
        self.policy = policy
        self.totals = PartitionRecord()
        # entry id -> (hits since the last flush, last hit time, LFU score after them)
        self._pending_hits: dict[int, tuple[int, float, float | None]] = {}
        # entry id -> expiry extended by sliding TTL, not yet flushed to LMDB
        self._pending_expiry: dict[int, float] = {}

    def is_expired(self, entry_id: int, record: EntryRecord, now: float) -> bool:
        return ttl.is_expired(record.expires_at, self._pending_expiry.get(entry_id, 0.0), now)

    def count_lookup(
        self,
        partition: LivePartition | None,
        outcome: str,
        *,
        entry_id: int = 0,
        record: EntryRecord | None = None,
        now: float = 0.0,
        sliding_ttl: bool = False,
    ) -> None:
        """Count a lookup; for a hit (EXACT_HIT/SEMANTIC_HIT) also its LFU hit and sliding TTL."""
        records = [self.totals] if partition is None else [self.totals, partition.record]
        with self.lock:
            for counters in records:
                counters.lookups += 1
                if outcome == MISS:
                    counters.misses += 1
                else:
                    counters.hits += 1
                    setattr(counters, outcome, getattr(counters, outcome) + 1)
                    counters.saved_cost += record.cost if record is not None else 0.0
            if partition is None:
                return
            partition.record.last_used_at = now
            partition.dirty = True
            if record is None:
                return
            score = self.policy.hit(entry_id, now)
            count = self._pending_hits.get(entry_id, (0, 0.0, None))[0]
            self._pending_hits[entry_id] = (count + 1, now, score)
            extended = ttl.slide(record.ttl_seconds, sliding_ttl, now)
            if extended is not None:
                self._pending_expiry[entry_id] = extended

    def touch(self, partition: LivePartition, now: float) -> None:
        with self.lock:
            partition.record.last_used_at = now
            partition.dirty = True

    def count_removed(
        self, removed: Sequence[tuple[int, EntryRecord]], reason: str | None, registry: PartitionRegistry
    ) -> dict[int, list[int]]:
        """Entries deleted from LMDB: out of the policy and byte counts, counted under
        `reason` ("evictions", "expirations", "invalidations"; None: not counted).
        Returns their ids by live partition, for the indexes."""
        by_partition: dict[int, list[int]] = {}
        with self.lock:
            for entry_id, record in removed:
                self.policy.remove(entry_id)
                self._pending_expiry.pop(entry_id, None)
                partition = registry.get_by_id(record.partition_id)
                if reason:
                    setattr(self.totals, reason, getattr(self.totals, reason) + 1)
                if partition is None:
                    continue
                by_partition.setdefault(partition.id, []).append(entry_id)
                partition.bytes -= entry_bytes(record)
                if reason:
                    setattr(partition.record, reason, getattr(partition.record, reason) + 1)
                    partition.dirty = True
        return by_partition

    def count_verdict(self, partition: LivePartition | None, correct: bool) -> None:
        name = "verdicts_correct" if correct else "verdicts_wrong"
        with self.lock:
            for counters in [self.totals] if partition is None else [self.totals, partition.record]:
                setattr(counters, name, getattr(counters, name) + 1)
            if partition is not None:
                partition.dirty = True

    def take_pending(self, partitions: Sequence[LivePartition]) -> PendingWrites:
        """Hits, extensions and changed counters to flush; the hits are handed over, the
        extensions stay until settle_expiries (lookups still need them)."""
        with self.lock:
            pending, self._pending_hits = self._pending_hits, {}
            expiries = dict(self._pending_expiry)
            dirty = [p for p in partitions if p.dirty]
            for partition in dirty:
                partition.dirty = False
            snapshots = [(p.id, PartitionRecord.FromString(p.record.SerializeToString())) for p in dirty]
            totals = self.totals.SerializeToString()
        return PendingWrites(pending, expiries, snapshots, totals)

    def put_back(self, pending: PendingWrites, partitions: Sequence[LivePartition]) -> None:
        """A flush of `pending` failed: its hits and changed counters wait for the next one."""
        by_id = {p.id: p for p in partitions}
        with self.lock:
            for entry_id, (count, last_hit_at, score) in pending.hits.items():
                newer = self._pending_hits.get(entry_id)
                if newer is None:
                    self._pending_hits[entry_id] = (count, last_hit_at, score)
                else:  # hit again meanwhile: its time and score are the newer ones
                    self._pending_hits[entry_id] = (count + newer[0], newer[1], newer[2])
            for partition_id, _ in pending.partitions:
                if partition_id in by_id:
                    by_id[partition_id].dirty = True

    def settle_expiries(self, expiries: dict[int, float]) -> None:
        """These extensions now live in LMDB."""
        with self.lock:
            for entry_id, expiry in expiries.items():
                if self._pending_expiry.get(entry_id) == expiry:
                    del self._pending_expiry[entry_id]
