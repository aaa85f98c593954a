"""Writes under the write lock: a group commit's Stores (with eviction and version
retirement in the same transaction), removals, and making both visible afterwards.

LMDB first (committed), then indexes and the in-memory partitions, so a crash in
between only loses index rows that recovery rebuilds.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
from collections.abc import Callable, Sequence

import numpy as np

from semcache_server import ttl
from semcache_server.entries import StoreResult, entry_bytes, format_entry_id
from semcache_server.errors import StorageFullError
from semcache_server.eviction import EvictionPolicy, Victim
from semcache_server.group_commit import StoreJob
from semcache_server.key_fingerprint import record_exact_suffix
from semcache_server.ledger import Ledger
from semcache_server.partition import PartitionKey
from semcache_server.partition_registry import LivePartition, PartitionRegistry, versions_to_retire
from semcache_server.settings import Settings
from semcache_server.store import ENTRY_ID_COUNTER, Store
from semcache_server.v1.records_pb2 import EntryRecord, PartitionRecord
from semcache_server.vector_index import VectorIndex

log = logging.getLogger("semcache")

# Entries removed per write transaction by invalidation and sweeps, so other
# writers get the lock between chunks.
DELETE_CHUNK = 2000
# When LMDB is at max_map_bytes or its volume is full: evict this share of entries
# (at least one) and retry.
FULL_EVICT_FRACTION = 0.01
# Rounds of that before a write is given up as "storage is full".
FULL_RETRIES = 8


class IndexUpdates:
    """The index changes of one commit, applied in order, with consecutive adds to one index
    made in one call. Adding a StoreBatch's vectors one by one held an IVF index's lock for
    a coarse-quantizer pass per vector (~0.3 ms each, ~150 ms per 500), and every Lookup of
    that partition waited; one call assigns them all in one matrix product."""

    def __init__(self) -> None:
        self._adds: dict[VectorIndex, tuple[list[int], list[np.ndarray]]] = {}

    def add(self, index: VectorIndex, entry_id: int, vector: np.ndarray) -> None:
        ids, vectors = self._adds.setdefault(index, ([], []))
        ids.append(entry_id)
        vectors.append(vector.reshape(-1))

    def remove(self, index: VectorIndex, entry_ids: Sequence[int]) -> None:
        self._flush(index)  # an entry added earlier in this commit may be the one removed
        index.remove(np.asarray(entry_ids, dtype=np.int64))

    def flush(self) -> None:
        for index in list(self._adds):
            self._flush(index)

    def _flush(self, index: VectorIndex) -> None:
        pending = self._adds.pop(index, None)
        if pending is not None:
            ids, vectors = pending
            index.add(np.asarray(ids, dtype=np.int64), np.vstack(vectors))


@dataclasses.dataclass(eq=False)
class _Applied:
    """What one Store changed inside the batch transaction, to finish or undo it."""

    job: StoreJob
    partition: LivePartition
    is_new: bool
    retired: list[LivePartition]
    entry_id: int = 0
    replaced_id: int | None = None
    replaced: EntryRecord | None = None
    replaced_victim: Victim | None = None
    victims: list[Victim] = dataclasses.field(default_factory=list)
    evicted: list[tuple[int, EntryRecord]] = dataclasses.field(default_factory=list)

    def undo(self, policy: EvictionPolicy) -> None:
        """Put the eviction policy back as it was before this Store (its transaction aborted)."""
        if self.entry_id:
            policy.remove(self.entry_id)
        policy.restore(self.victims + ([self.replaced_victim] if self.replaced_victim else []))


class Writer:
    """Every LMDB write of the cache's entries, and what follows it in memory. Methods
    named *_locked need write_lock held; the others take it."""

    def __init__(
        self,
        store: Store,
        registry: PartitionRegistry,
        ledger: Ledger,
        settings: Settings,
        dimension: int,
        clock: Callable[[], float],
        write_lock: threading.Lock,
    ) -> None:
        self.store = store
        self.registry = registry
        self.ledger = ledger
        self.settings = settings
        self.dimension = dimension
        self.clock = clock
        self.write_lock = write_lock
        self.store_commits = 0  # LMDB transactions that committed Stores (for group-commit figures)

    # -- Stores ------------------------------------------------------------------

    def commit_batch_locked(self, batch: list[StoreJob]) -> list[LivePartition]:
        """Apply each job in a nested transaction (a failing job fails alone), commit once,
        then update indexes. Returns the partitions retired."""
        now = self.clock()
        applied: list[_Applied] = []
        new_partitions: dict[PartitionKey, LivePartition] = {}
        retired_ids: set[int] = set()
        try:
            with self.store.write(keep_delete_reserve=True) as txn:
                for job in batch:
                    try:
                        with self.store.nested(txn) as child:
                            done = self._apply_store(child, job, now, new_partitions, retired_ids)
                    except BaseException as e:
                        job.error, job.done = e, True
                        continue
                    applied.append(done)
                    if done.is_new:
                        new_partitions[job.key] = done.partition
                    retired_ids.update(p.id for p in done.retired)
        except BaseException as e:  # the commit itself failed: nothing of the batch is stored
            with self.ledger.lock:
                for done in reversed(applied):
                    done.undo(self.ledger.policy)
            for done in applied:
                done.job.error, done.job.done = e, True
            return []
        self.store_commits += 1
        retired: list[LivePartition] = []
        updates = IndexUpdates()
        for done in applied:
            self._after_commit(done, now, updates)
            retired.extend(done.retired)
        updates.flush()  # every vector is searchable before any Store of the batch is acknowledged
        for done in applied:
            done.job.done = True
        return retired

    def _apply_store(
        self, txn, job: StoreJob, now: float, new_partitions: dict[PartitionKey, LivePartition], retired_ids: set[int]
    ) -> _Applied:
        """The LMDB and eviction-policy part of one Store, inside the batch's transaction."""
        record = job.record
        record.created_at = now
        record.expires_at = ttl.expires_at(now, record.ttl_seconds)
        partition, is_new, retired = self._partition_for_store(txn, job.key, now, new_partitions, retired_ids)
        record.partition_id = partition.id
        done = _Applied(job, partition, is_new, retired)
        policy = self.ledger.policy
        try:
            if record.normalized_query:
                done.replaced_id = self.store.find_exact(
                    txn, partition.id, record.normalized_query, record_exact_suffix(record)
                )
            if done.replaced_id is not None:
                done.replaced = self.store.get_entry(txn, done.replaced_id)
                if done.replaced is not None:
                    self.store.delete_entry(txn, done.replaced_id, done.replaced)
            with self.ledger.lock:
                if done.replaced is not None:
                    done.replaced_victim = policy.remove(done.replaced_id)  # type: ignore[arg-type]
                done.victims = policy.choose_victims(job.key.namespace, job.size)
            for victim in done.victims:
                victim_record = self.store.get_entry(txn, victim.entry_id)
                if victim_record is not None:
                    self.store.delete_entry(txn, victim.entry_id, victim_record)
                    done.evicted.append((victim.entry_id, victim_record))
            done.entry_id = self.store.next_id(txn, ENTRY_ID_COUNTER)
            self.store.put_entry(txn, done.entry_id, record)
            with self.ledger.lock:
                policy.add(job.key.namespace, done.entry_id, job.size, now)
        except BaseException:
            with self.ledger.lock:
                done.undo(policy)
            raise
        return done

    def _after_commit(self, done: _Applied, now: float, updates: IndexUpdates) -> None:
        """Make a committed Store visible: partitions, index rows (through `updates`), byte counts."""
        partition, job = done.partition, done.job
        if done.is_new:
            self.registry.publish(partition)
        for old in done.retired:
            self.registry.unpublish(old)
        if done.replaced is not None:
            updates.remove(partition.index, [done.replaced_id])  # type: ignore[list-item]
            partition.bytes -= entry_bytes(done.replaced)
        self.forget_locked(done.evicted, "evictions", updates)
        updates.add(partition.index, done.entry_id, job.vector)
        partition.bytes += job.size
        self.ledger.touch(partition, now)
        job.result = StoreResult(
            entry_id=format_entry_id(done.entry_id),
            replaced=done.replaced is not None,
            expires_at=job.record.expires_at,
            resolved_version=job.key.version,
        )

    def _partition_for_store(
        self, txn, key: PartitionKey, now: float, new_partitions: dict[PartitionKey, LivePartition], retired_ids: set[int]
    ) -> tuple[LivePartition, bool, list[LivePartition]]:
        """(partition, is_new, retired): the live partition for key (or one this batch created),
        or a new one created in txn and made visible after the commit.

        A new version beyond max_versions_per_model retires the least recently used
        versions of the same namespace+model, in the same transaction.
        """
        partition = new_partitions.get(key) or self.registry.get(key)
        if partition is not None and partition.id not in retired_ids:
            return partition, False, []
        published = self.registry.versions(key.namespace, key.model)
        created = [p for p in new_partitions.values() if (p.key.namespace, p.key.model) == (key.namespace, key.model)]
        siblings = [p for p in itertools.chain(published, created) if p.id not in retired_ids]
        retired = versions_to_retire(siblings, self.settings.max_versions_per_model)
        for old in retired:
            self.store.mark_partition_dropping(txn, old.id)
        partition_id = self.store.next_id(txn, "next_partition_id")
        record = PartitionRecord(
            namespace=key.namespace, model=key.model, version=key.version, created_at=now, last_used_at=now
        )
        self.store.put_partition(txn, partition_id, record)
        live_record = PartitionRecord.FromString(record.SerializeToString())  # the in-memory copy, mutated by lookups
        return LivePartition(partition_id, key, live_record, self.settings, self.dimension), True, retired

    # -- removals ------------------------------------------------------------------

    def forget_locked(
        self, removed: Sequence[tuple[int, EntryRecord]], reason: str | None, updates: IndexUpdates | None = None
    ) -> None:
        """After a commit that deleted these entries: drop them from indexes (now, or through
        `updates`), policy and byte counts, and count them under `reason` ("evictions",
        "expirations", "invalidations")."""
        by_partition = self.ledger.count_removed(removed, reason, self.registry)
        updates = updates or IndexUpdates()  # nothing pending: its removals apply at once
        for partition_id, ids in by_partition.items():
            partition = self.registry.get_by_id(partition_id)
            assert partition is not None  # count_removed listed only live partitions, under the write lock
            updates.remove(partition.index, ids)

    def delete_entry_ids(
        self,
        entry_ids: Sequence[int],
        *,
        reason: str | None,
        still: Callable[[int, EntryRecord], bool] | None = None,
    ) -> int:
        """Delete entries in chunks of one transaction each; `still` re-checks each one inside
        the transaction. Returns how many were deleted."""
        deleted = 0
        for start in range(0, len(entry_ids), DELETE_CHUNK):
            chunk = entry_ids[start:start + DELETE_CHUNK]
            with self.write_lock:
                removed: list[tuple[int, EntryRecord]] = []
                with self.store.write() as txn:
                    for entry_id in chunk:
                        record = self.store.get_entry(txn, entry_id)
                        if record is not None and (still is None or still(entry_id, record)):
                            self.store.delete_entry(txn, entry_id, record)
                            removed.append((entry_id, record))
                self.forget_locked(removed, reason)
            deleted += len(removed)
        return deleted

    def amend_entry(self, partition_id: int, entry_id: int, change: Callable[[EntryRecord], None]) -> bool:
        """Rewrite an entry of this partition with `change` applied; False when it is gone."""
        with self.write_lock, self.store.write() as txn:
            old = self.store.get_entry(txn, entry_id)
            if old is None or old.partition_id != partition_id:
                return False
            new = EntryRecord.FromString(old.SerializeToString())
            change(new)
            self.store.update_entry(txn, entry_id, old, new)
            return True

    def evict_for_space(self, needed_bytes: int = 0, *, fraction: float = FULL_EVICT_FRACTION) -> bool:
        """LMDB is full: evict the least valuable entries, `fraction` of them (1% by default,
        one at least) and at least needed_bytes' worth. False when there is none to evict."""
        with self.ledger.lock:
            policy = self.ledger.policy
            victims = policy.lowest(max(1, int(policy.entries * fraction)))
            freed = sum(v.entry.size_bytes for v in victims)
            while victims and freed < needed_bytes:
                more = policy.lowest(1)
                if not more:
                    break
                victims += more
                freed += more[0].entry.size_bytes
        if not victims:
            return False
        log.warning("storage full (max_map_bytes or the data volume): evicting %d entries", len(victims))
        try:
            return self.delete_entry_ids([v.entry_id for v in victims], reason="evictions") > 0
        except StorageFullError:  # the delete itself found no free page: track what is still there again
            with self.write_lock, self.store.read() as txn:
                kept = [v for v in victims if self.store.get_entry(txn, v.entry_id) is not None]
                with self.ledger.lock:
                    self.ledger.policy.restore([v for v in kept if self.ledger.policy.frequency(v.entry_id, 0.0) is None])
            raise
