"""The cache's state on this node: LMDB (`Store`) holds every entry; each live partition
has a FAISS `VectorIndex` rebuilt from LMDB at start.

Locks, always taken in this order: the write lock (LMDB write transactions and the
index and partition changes that follow them), then the group commit's queue lock or
the ledger's lock (counters, pending hit counts, the eviction policy). Lookups take
neither to read: LMDB readers never wait for writers.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import lmdb
import numpy as np
from google.protobuf.message import DecodeError

from semcache_server.data_dir import aborted_start_error, begin_start, damaged_data_error, finish_start
from semcache_server.decision import Candidate
from semcache_server.entries import StatsView, StoreResult
from semcache_server.errors import SemcacheError, StorageFullError
from semcache_server.eviction import Budget, EvictionPolicy
from semcache_server.group_commit import GroupCommit, StoreJob
from semcache_server.invalidation import Invalidator
from semcache_server.key_fingerprint import NO_FILTER, CandidateFilter, record_exact_suffix
from semcache_server.ledger import Ledger
from semcache_server.maintenance import Maintenance
from semcache_server.partition import PartitionKey
from semcache_server.partition_registry import LivePartition, PartitionRegistry
from semcache_server.recovery import CALIBRATION_PREFIX, VERDICT_PREFIX, check_consistency, read_meta, rebuild
from semcache_server.salvage import walk_in_child
from semcache_server.settings import Settings
from semcache_server.stats import stats_view
from semcache_server.store import Store
from semcache_server.v1.records_pb2 import EntryRecord
from semcache_server.vector_index import widening_search
from semcache_server.writes import FULL_EVICT_FRACTION, FULL_RETRIES, Writer

log = logging.getLogger("semcache")

# At the map ceiling a Store evicts at least this many times its own size per try, and
# keeps trying (FULL_RETRIES at least) while there is anything to evict, for up to this
# long: a guard against a livelock, not a budget (a client's default timeout is 30 s).
# At 5 s, 2 of 900 Stores of the full-map test ran out of it on CI's 2 busy cores.
_FULL_EVICT_SIZES = 4
_FULL_RETRY_SECONDS = 30.0
# After a Store found the map full, every Store for this long first evicts its own size:
# at the ceiling each one pays for the room it takes, so freed room is not taken by others
# while the one that evicted for it waits, and a delete always finds free pages.
_AT_CEILING_SECONDS = 2.0


class LocalCandidates:
    """Live candidates from a partition's index, best first, with their LMDB records.
    Searches again with a larger k only when the first ones are expired or deleted."""

    def __init__(
        self, store: Store, ledger: Ledger, partition: LivePartition, vector: np.ndarray, now: float, match: CandidateFilter,
    ) -> None:
        self._store = store
        self._match = match
        self._ledger = ledger
        self._partition = partition
        self._vector = vector
        self._now = now
        self.search_seconds: list[float] = []
        self._iterator: Iterator[Candidate] | None = None

    def __iter__(self) -> Iterator[Candidate]:
        self._iterator = self._live()
        return self._iterator

    def __enter__(self) -> LocalCandidates:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._iterator is not None:
            self._iterator.close()  # type: ignore[attr-defined]  # ends its read transaction now

    def _live(self) -> Iterator[Candidate]:
        partition = self._partition
        for found in widening_search(partition.index, self._vector, self.search_seconds):
            with self._store.read() as txn:
                for entry_id, similarity in found:
                    record = self._store.get_entry(txn, entry_id)
                    if record is None or record.partition_id != partition.id or not self._match.accepts(record):
                        continue
                    if self._ledger.is_expired(entry_id, record, self._now):
                        continue
                    yield Candidate(entry_id, record, similarity)


class LocalStorage:
    """Implements `semcache_server.storage.CacheStorage` on LMDB and FAISS."""

    def __init__(self, settings: Settings, dimension: int, embedding_model: str, clock: Callable[[], float]) -> None:
        started = time.monotonic()
        self._clock = clock
        self.store = Store(settings.data_dir, max_map_bytes=settings.max_map_bytes, sync_writes=settings.sync_writes)
        data_dir = Path(settings.data_dir)
        try:
            if begin_start(data_dir) and not walk_in_child(data_dir / "cache.lmdb"):
                raise aborted_start_error(settings.data_dir)
            recovered = read_meta(self.store, settings, embedding_model, dimension)
            policy = EvictionPolicy(
                settings.lfu_half_life_seconds,
                Budget(settings.max_entries, settings.max_bytes),
                {
                    name: Budget(ns.max_entries or 0, ns.max_bytes or 0)
                    for name, ns in settings.namespaces.items()
                    if ns.max_entries or ns.max_bytes
                },
            )
            self.ledger = Ledger(policy)
            self.ledger.totals = recovered.totals
            self.namespace_thresholds: Mapping[str, float] = recovered.namespace_thresholds
            self.lookup_id_key = recovered.lookup_id_key
            with self.store.read() as txn:
                self.calibrations: Mapping[str, str] = {
                    name[len(CALIBRATION_PREFIX):]: value for name, value in self.store.iter_meta(txn, CALIBRATION_PREFIX)
                }
            self.registry = PartitionRegistry()
            self.write_lock = threading.Lock()
            self._at_ceiling_until = 0.0  # monotonic; see _AT_CEILING_SECONDS
            self.writer = Writer(self.store, self.registry, self.ledger, settings, dimension, clock, self.write_lock)
            self.invalidator = Invalidator(self.store, self.registry, self.writer)
            self.group_commit = GroupCommit(self.write_lock, self.writer.commit_batch_locked, self.invalidator.retire)
            self.maintenance = Maintenance(
                self.store, self.registry, self.ledger, self.writer, settings, recovered.hits_table_from_entry_id
            )
            rebuild(self.store, self.registry, policy, self.writer, self.invalidator, settings, dimension)
            finish_start(data_dir)
        except (lmdb.Error, DecodeError, ValueError) as e:  # damage below the entry records' checksums
            self.store.close()
            raise damaged_data_error(settings.data_dir, e) from None
        except BaseException:
            self.store.close()
            raise
        self.recovery_seconds = time.monotonic() - started
        self._max_entry_bytes = settings.max_map_bytes // 2

    # -- lookups ------------------------------------------------------------------

    def partition(self, key: PartitionKey) -> LivePartition | None:
        return self.registry.get(key)

    def exact_candidate(
        self, partition: LivePartition, normalized_query: str, now: float, match: CandidateFilter = NO_FILTER,
    ) -> Candidate | None:
        """The live entry stored under this normalized query and key, as a candidate of similarity 1."""
        with self.store.read() as txn:
            entry_id = self.store.find_exact(txn, partition.id, normalized_query, match.exact_suffix)
            record = None if entry_id is None else self.store.get_entry(txn, entry_id)
        if entry_id is None or record is None or record.normalized_query != normalized_query:
            return None
        if record_exact_suffix(record) != match.exact_suffix or not match.accepts(record, check_context=False):
            return None
        if self.ledger.is_expired(entry_id, record, now):
            return None
        return Candidate(entry_id, record, 1.0)

    def candidates(
        self, partition: LivePartition, vector: np.ndarray, now: float, match: CandidateFilter = NO_FILTER,
    ) -> LocalCandidates:
        return LocalCandidates(self.store, self.ledger, partition, vector, now, match)

    def count_lookup(
        self, partition: LivePartition | None, outcome: str, *, candidate: Candidate | None = None,
        now: float = 0.0, sliding_ttl: bool = False,
    ) -> None:
        if candidate is None:
            self.ledger.count_lookup(partition, outcome, now=now)
        else:
            self.ledger.count_lookup(
                partition, outcome, entry_id=candidate.entry_id, record=candidate.record, now=now, sliding_ttl=sliding_ttl
            )

    # -- stores ---------------------------------------------------------------------

    def budget_refuses(self, namespace: str, size_bytes: int) -> int:
        """The byte budget an entry of this size can never fit in (0: it can fit)."""
        return self.ledger.policy.too_large(namespace, size_bytes)

    def commit(self, job: StoreJob) -> StoreResult:
        """Commit one Store (grouped with concurrent ones); where LMDB is full, evict the
        least valuable entries and retry. An entry that could never fit is refused before
        anything is evicted for it."""
        if job.size > self._max_entry_bytes:
            raise StorageFullError(
                f"entry is {job.size} bytes; no entry over {self._max_entry_bytes} bytes (half of max_map_bytes) "
                "can be stored, since LMDB writes new pages before it frees old ones; raise max_map_bytes"
            )
        started = time.monotonic()
        give_up_at = started + _FULL_RETRY_SECONDS
        if started < self._at_ceiling_until:
            self._evict_for(job.size, fraction=0.0)
        for attempt in itertools.count():
            try:
                # A retry commits alone: in a group with other full Stores it could need
                # the room of all of them at once, and fail with them again.
                return self._commit_once(job) if attempt == 0 else self._commit_alone(job)
            except StorageFullError:
                job.done, job.error = False, None
                self._at_ceiling_until = time.monotonic() + _AT_CEILING_SECONDS
            # Evict at least a few times this entry's size. Under load the room freed can go
            # to concurrent Stores, and LMDB reuses freed pages only once no reader holds a
            # snapshot older than the delete, so retry (with a short backoff) until the entry
            # fits or nothing is left to evict, not a fixed number of times.
            if not self._evict_for(_FULL_EVICT_SIZES * job.size):
                raise StorageFullError("storage is full (max_map_bytes reached) and nothing is left to evict")
            if attempt >= FULL_RETRIES and time.monotonic() > give_up_at:
                raise StorageFullError(
                    f"storage is full (max_map_bytes reached) and eviction did not make room in "
                    f"{time.monotonic() - started:.1f} s ({attempt + 1} tries)"
                )
            time.sleep(min(0.001 * 2**attempt, 0.05))
        raise AssertionError("unreachable")

    def _evict_for(self, needed_bytes: int, *, fraction: float = FULL_EVICT_FRACTION) -> bool:
        """Evict at least needed_bytes' worth; False when nothing is left to evict."""
        try:
            return self.writer.evict_for_space(needed_bytes=needed_bytes, fraction=fraction)
        except StorageFullError:  # even the delete found no free page: let readers move on
            return True

    def commit_all(self, jobs: Sequence[StoreJob]) -> list[StoreResult | SemcacheError]:
        """Commit these Stores together; each gets its own result or error. One refused
        for a full LMDB is retried alone, evicting for room."""
        if time.monotonic() < self._at_ceiling_until:
            self._evict_for(sum(job.size for job in jobs), fraction=0.0)
        self.group_commit.commit(list(jobs))
        results: list[StoreResult | SemcacheError] = []
        for job in jobs:
            if job.error is None:
                assert job.result is not None
                results.append(job.result)
            elif isinstance(job.error, StorageFullError):
                job.done, job.error = False, None
                try:
                    results.append(self.commit(job))
                except SemcacheError as e:
                    results.append(e)
            elif isinstance(job.error, SemcacheError):
                results.append(job.error)
            else:
                raise job.error
        return results

    def _commit_once(self, job: StoreJob) -> StoreResult:
        self.group_commit.commit([job])
        return _outcome(job)

    def _commit_alone(self, job: StoreJob) -> StoreResult:
        """Commit one Store in a transaction of its own (not grouped)."""
        with self.write_lock:
            retired = self.writer.commit_batch_locked([job])
        self.invalidator.retire(retired)
        return _outcome(job)

    @property
    def store_commits(self) -> int:
        return self.writer.store_commits

    def entry(self, key: PartitionKey, entry_id: int) -> EntryRecord | None:
        """A live entry of this partition, or None."""
        partition = self.registry.get(key)
        if partition is None:
            return None
        with self.store.read() as txn:
            record = self.store.get_entry(txn, entry_id)
        return record if record is not None and record.partition_id == partition.id else None

    def record_verdict(
        self, key: PartitionKey, entry_id: int, correct: bool, change: Callable[[EntryRecord], None] | None,
    ) -> bool:
        """Count a verdict on a hit of this partition; `change` (a wrong one's) is applied to
        the entry. False when the entry or its partition is gone."""
        partition = self.registry.get(key)
        self.ledger.count_verdict(partition, correct)
        if partition is None or change is None:
            return partition is not None
        return self.writer.amend_entry(partition.id, entry_id, change)

    # -- removals and settings ------------------------------------------------------------

    def delete(self, key: PartitionKey, entry_id: int) -> bool:
        return self.invalidator.delete(key, entry_id)

    def invalidate(
        self, key: PartitionKey, *, all_versions: bool = False, whole_namespace: bool = False,
        metadata_match: Mapping[str, str] | None = None,
    ) -> int:
        return self.invalidator.invalidate(
            key, all_versions=all_versions, whole_namespace=whole_namespace, metadata_match=metadata_match
        )

    def save_namespace_thresholds(self, thresholds: dict[str, float]) -> None:
        with self.write_lock, self.store.write() as txn:
            self.store.put_meta(txn, "namespace_thresholds", json.dumps(thresholds, sort_keys=True))

    def watch_namespace_thresholds(self, changed: Callable[[Mapping[str, float]], None]) -> None:
        return None  # one node: only this server changes them

    def save_calibration(self, namespace: str, data: str) -> None:
        with self.write_lock, self.store.write() as txn:
            self.store.put_meta(txn, CALIBRATION_PREFIX + namespace, data)

    def claim_verdict(self, key: PartitionKey, claim: bytes, expires_at: float) -> bool:
        now = self._clock()
        name = f"{VERDICT_PREFIX}{int(expires_at):010d}:{claim.hex()}"
        with self.write_lock, self.store.write() as txn:
            if self.store.get_meta(txn, name) is not None:
                return False
            expired: list[str] = []  # the oldest claims first: drop a bounded batch of the expired ones
            for old, _ in self.store.iter_meta(txn, VERDICT_PREFIX):
                if len(expired) >= _CLAIMS_PRUNED_PER_VERDICT or int(old[len(VERDICT_PREFIX):].split(":")[0]) >= now:
                    break
                expired.append(old)
            for old in expired:
                self.store.delete_meta(txn, old)
            self.store.put_meta(txn, name, "")
        return True

    # -- reporting and upkeep ---------------------------------------------------------------

    def stats(
        self, namespace: str | None = None, model: str = "", version: str = "", *,
        allowed: Callable[[str], bool] | None = None, listed: int | None = None,
    ) -> StatsView:
        return stats_view(
            self.registry, self.ledger, namespace, model, version, allowed=allowed, listed=listed,
            damaged_entries=len(self.store.corrupt_entry_ids),
        )

    def check_consistency(self) -> list[str]:
        with self.write_lock:
            return check_consistency(self.store, self.registry, self.ledger.policy)

    def flush_stats(self) -> None:
        self.maintenance.flush_stats()

    def sweep_expired(self) -> int:
        return self.maintenance.sweep_expired()

    def wait_for_purges(self) -> None:
        self.invalidator.wait_for_purges()

    def start_maintenance(self) -> None:
        self.maintenance.start()

    def close(self) -> None:
        self.maintenance.stop()
        self.wait_for_purges()
        try:
            self.maintenance.flush_stats_making_room()
        except StorageFullError as e:  # entries are safe in LMDB; only the last counts are lost
            log.warning("hit counts since the last flush were not written: %s", e)
        self.store.close()


# Expired verdict claims a new claim deletes at most (more than one, so they never pile up).
_CLAIMS_PRUNED_PER_VERDICT = 8


def _outcome(job: StoreJob) -> StoreResult:
    if job.error is not None:
        raise job.error
    assert job.result is not None
    return job.result
