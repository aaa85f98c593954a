"""The cache engine: partitions, the exact and semantic tiers, storage and recovery.

LMDB (`Store`) holds every entry; each live partition has a `VectorIndex` rebuilt
from LMDB at start. Writes go LMDB first (committed, then acknowledged), index
second, so a crash between the two only loses index rows that recovery rebuilds.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from semcache.embedder import Embedder
from semcache.errors import (
    ConfigError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
    SemcacheError,
    StorageFullError,
)
from semcache.eviction import Budget, EvictionPolicy, Victim
from semcache.guard import conflict
from semcache.metrics import Metrics
from semcache.normalize import normalize_query
from semcache.partition import PartitionKey
from semcache.settings import Settings
from semcache.store import Store
from semcache.v1.records_pb2 import EntryHits, EntryRecord, PartitionRecord
from semcache.vector_index import VectorIndex

log = logging.getLogger("semcache")

# Candidates fetched per semantic search; more are fetched only when the best
# ones turn out to be expired or deleted.
_SEARCH_K = 8
# Entries removed per write transaction by invalidation and sweeps, so other
# writers get the lock between chunks.
_DELETE_CHUNK = 2000
# When LMDB is at max_map_bytes or its volume is full: evict this share of entries
# (at least one) and retry.
_FULL_EVICT_FRACTION = 0.01
_FULL_RETRIES = 8
_NO_MODEL = "this server runs without an embedding model; send an embedding"
_ENTRY_ID_COUNTER = "next_entry_id"
# PartitionRecord counters, summed for totals and shown in Stats.
COUNTERS = (
    "lookups", "hits", "exact_hits", "semantic_hits", "misses", "saved_cost",
    "evictions", "expirations", "invalidations",
)


@dataclasses.dataclass(frozen=True)
class LookupResult:
    hit: bool
    threshold: float
    resolved_version: str
    entry_id: str = ""
    response: bytes = b""
    # Of the match, or on a miss of the best candidate; None when there was none.
    similarity: float | None = None
    matched_query: str = ""
    exact: bool = False
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # On a miss: why the guard refused a candidate at or above the threshold.
    guard_reason: str = ""


@dataclasses.dataclass(frozen=True)
class StoreResult:
    entry_id: str
    replaced: bool
    expires_at: float
    resolved_version: str


@dataclasses.dataclass
class PartitionStatsView:
    key: PartitionKey
    entries: int
    bytes: int
    record: PartitionRecord


@dataclasses.dataclass
class StatsView:
    entries: int
    bytes: int
    totals: PartitionRecord
    partitions: list[PartitionStatsView]  # the first `listed` of the matching ones, in key order
    partitions_total: int  # how many partitions matched


@dataclasses.dataclass(frozen=True)
class StoreItem:
    """One entry of a store_batch call."""

    key: PartitionKey
    query: str
    response: bytes
    embedding: Sequence[float] | np.ndarray | None = None
    ttl_seconds: int = 0
    metadata: Mapping[str, str] | None = None
    cost: float = 0.0


@dataclasses.dataclass(eq=False)
class _StoreJob:
    """One Store waiting for a group commit."""

    key: PartitionKey
    record: EntryRecord
    vector: np.ndarray
    size: int
    done: bool = False
    result: StoreResult | None = None
    error: BaseException | None = None


@dataclasses.dataclass(eq=False)
class _StoreCall:
    """One caller's jobs in the group-commit queue; `wake` is set when they are done or
    when the caller is made the next leader."""

    jobs: list[_StoreJob]
    lead: bool = False
    wake: threading.Event = dataclasses.field(default_factory=threading.Event)


@dataclasses.dataclass(eq=False)
class _Applied:
    """What one Store changed inside the batch transaction, to finish or undo it."""

    job: _StoreJob
    partition: "_Partition"
    is_new: bool
    retired: list["_Partition"]
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


def entry_bytes(record: EntryRecord) -> int:
    """What an entry counts against byte budgets: query + response + vector + metadata."""
    metadata = sum(len(k.encode()) + len(v.encode()) for k, v in record.metadata.items())
    return len(record.query.encode("utf-8", "surrogatepass")) + len(record.response) + len(record.embedding) + metadata


def format_entry_id(entry_id: int) -> str:
    return str(entry_id)


def parse_entry_id(text: str) -> int:
    if not text.isdigit() or len(text) > 20:
        raise InvalidArgumentError(f"entry_id {text[:40]!r} is not an entry id")
    return int(text)


def _check_similarity(min_similarity: float) -> None:
    if not (math.isfinite(min_similarity) and -1.0 <= min_similarity <= 1.0):
        raise InvalidArgumentError(f"min_similarity must be between -1 and 1, got {min_similarity}")


class _Partition:
    """In-memory state of one live partition."""

    def __init__(self, partition_id: int, key: PartitionKey, record: PartitionRecord, settings: Settings, dimension: int) -> None:
        self.id = partition_id
        self.key = key
        self.record = record  # counters and last_used_at; mutated under the cache's stats lock
        self.index = VectorIndex(dimension, ivf_min_entries=settings.ivf_min_entries, ivf_nprobe=settings.ivf_nprobe)
        self.bytes = 0
        self.dirty = False


class _IndexUpdates:
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


class SemanticCache:
    """Thread-safe: lookups never wait for writers; writes are serialized by one lock.

    Locks, always taken in this order: _write_lock (LMDB write transactions and the
    index and partition changes that follow them), then _queue_lock (Store calls waiting
    for a group commit) or _stats_lock (counters, pending hit counts, the eviction
    policy).
    """

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder | None,
        *,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.clock = clock
        self.metrics = metrics or Metrics()
        if embedder is not None:
            self.dimension = embedder.dimension
            self.embedding_model = embedder.name
        else:
            if settings.embedding_dimension <= 0:
                raise ConfigError("embedding_dimension must be > 0 without an embedding model")
            self.dimension = settings.embedding_dimension
            self.embedding_model = "none"
        self._store = Store(
            settings.data_dir, max_map_bytes=settings.max_map_bytes, sync_writes=settings.sync_writes
        )
        self._write_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        # Store calls waiting for the next group commit, and whether one leads; see _group_commit.
        self._queue_lock = threading.Lock()
        self._store_queue: list[_StoreCall] = []
        self._committing = False
        self.store_commits = 0  # LMDB transactions that committed Stores (for group-commit figures)
        self._by_key: dict[PartitionKey, _Partition] = {}
        self._by_id: dict[int, _Partition] = {}
        # The live versions of each namespace + model, for max_versions_per_model.
        self._versions: dict[tuple[str, str], dict[int, _Partition]] = {}
        self._totals = PartitionRecord()
        # Thresholds set at run time (SetNamespaceThreshold); persisted in LMDB meta.
        self._namespace_thresholds: dict[str, float] = {}
        self._policy = EvictionPolicy(
            settings.lfu_half_life_seconds,
            Budget(settings.max_entries, settings.max_bytes),
            {
                name: Budget(ns.max_entries or 0, ns.max_bytes or 0)
                for name, ns in settings.namespaces.items()
                if ns.max_entries or ns.max_bytes
            },
        )
        # entry id -> (hits since the last flush, last hit time, LFU score after them)
        self._pending_hits: dict[int, tuple[int, float, float | None]] = {}
        # entry id -> expiry extended by sliding TTL, not yet flushed to LMDB
        self._pending_expiry: dict[int, float] = {}
        self._stop = threading.Event()
        self._maintenance: threading.Thread | None = None
        self._purges: list[threading.Thread] = []
        started = time.monotonic()
        try:
            self._recover()
        except BaseException:
            self._store.close()
            raise
        self.recovery_seconds = time.monotonic() - started

    # -- lifecycle ----------------------------------------------------------

    def start_maintenance(self) -> None:
        """Start the background thread that flushes hit counts and sweeps expired entries."""
        if self._maintenance is None:
            self._maintenance = threading.Thread(target=self._maintenance_loop, name="semcache-maintenance", daemon=True)
            self._maintenance.start()

    def close(self) -> None:
        self._stop.set()
        if self._maintenance is not None:
            self._maintenance.join()
            self._maintenance = None
        self.wait_for_purges()
        self.flush_stats()
        self._store.close()

    def _maintenance_loop(self) -> None:
        next_sweep = time.monotonic() + self.settings.sweep_interval_seconds
        while not self._stop.wait(self.settings.stats_flush_interval_seconds):
            try:
                self.flush_stats()
                if time.monotonic() >= next_sweep:
                    self.sweep_expired()
                    next_sweep = time.monotonic() + self.settings.sweep_interval_seconds
            except Exception:  # keep maintaining; the next round retries
                log.exception("maintenance round failed")

    # -- recovery -----------------------------------------------------------

    def _recover(self) -> None:
        with self._store.write() as txn:
            stored_model = self._store.get_meta(txn, "embedding_model")
            stored_dimension = self._store.get_meta(txn, "embedding_dimension")
            if stored_model is None:
                self._store.put_meta(txn, "embedding_model", self.embedding_model)
                self._store.put_meta(txn, "embedding_dimension", str(self.dimension))
            elif (stored_model, stored_dimension) != (self.embedding_model, str(self.dimension)):
                raise ConfigError(
                    f"data_dir {self.settings.data_dir!r} holds vectors of embedding model "
                    f"{stored_model!r} ({stored_dimension} dims); this server uses {self.embedding_model!r} "
                    f"({self.dimension} dims). Use another data_dir, or delete this one."
                )
            # Entries from this id on were stored by a version that keeps hit counts in
            # entry_hits only; older ones may still carry them in their record.
            first = self._store.get_meta(txn, "hits_table_from_entry_id")
            if first is None:
                first = str(self._store.last_id(txn, _ENTRY_ID_COUNTER) + 1)
                self._store.put_meta(txn, "hits_table_from_entry_id", first)
            self._hits_table_from_entry_id = int(first)
            totals = self._store.get_meta(txn, "totals")
            if totals is not None:
                self._totals = PartitionRecord.FromString(bytes.fromhex(totals))
            self._namespace_thresholds = json.loads(self._store.get_meta(txn, "namespace_thresholds") or "{}")
        dropping = []
        with self._store.read() as txn:
            for partition_id, record in self._store.iter_partitions(txn):
                if record.dropping:
                    dropping.append(partition_id)
                    continue
                key = PartitionKey(record.namespace, record.model, record.version)
                self._publish(_Partition(partition_id, key, record, self.settings, self.dimension))
        for partition_id in dropping:  # an invalidation was cut off: finish it
            self._purge_partition(partition_id)
        orphans = []
        vectors: dict[int, list[bytes]] = {}
        ids: dict[int, list[int]] = {}
        with self._store.read() as txn, self._policy.bulk():
            for entry_id, record in self._store.iter_entries(txn):
                partition = self._by_id.get(record.partition_id)
                if partition is None:
                    orphans.append(entry_id)
                    continue
                vectors.setdefault(partition.id, []).append(record.embedding)
                ids.setdefault(partition.id, []).append(entry_id)
                size = entry_bytes(record)
                partition.bytes += size
                hits = self._store.get_hits(txn, entry_id) or record  # the record's: written before entry_hits
                self._policy.add(
                    partition.key.namespace, entry_id, size, record.created_at,
                    score=hits.lfu_score or None, last_used_at=max(record.created_at, hits.last_hit_at),
                )
        for partition_id, partition_vectors in vectors.items():
            matrix = np.frombuffer(b"".join(partition_vectors), dtype=np.float32).reshape(-1, self.dimension)
            self._by_id[partition_id].index.add(np.asarray(ids[partition_id], dtype=np.int64), matrix)
        if orphans:
            self._delete_entry_ids(orphans, reason=None)
        log.info(
            "recovered %d partitions, %d entries",
            len(self._by_id), sum(len(p.index) for p in self._by_id.values()),
        )

    def _publish(self, partition: _Partition) -> None:
        self._by_key[partition.key] = partition
        self._by_id[partition.id] = partition
        self._versions.setdefault((partition.key.namespace, partition.key.model), {})[partition.id] = partition

    def _unpublish(self, partition: _Partition) -> None:
        self._by_key.pop(partition.key, None)
        self._by_id.pop(partition.id, None)
        versions = self._versions.get((partition.key.namespace, partition.key.model), {})
        versions.pop(partition.id, None)
        if not versions:
            self._versions.pop((partition.key.namespace, partition.key.model), None)

    # -- validation -----------------------------------------------------------

    def _vector(self, embedding: Sequence[float] | np.ndarray | None) -> np.ndarray | None:
        """The L2-normalized client vector, or None when the client sent none."""
        if embedding is None or len(embedding) == 0:
            return None
        # A copy (np.array, not asarray): it is scaled in place below. One dot product
        # gives the norm and, being NaN or infinite exactly when an element is, the
        # finiteness check (~7 us per request instead of ~22 us with isfinite + norm).
        vector = np.array(embedding, dtype=np.float64)
        if vector.shape != (self.dimension,):
            raise InvalidArgumentError(
                f"embedding has {vector.size} dimensions; this server's model has {self.dimension}"
            )
        norm = math.sqrt(float(vector @ vector))
        if not math.isfinite(norm):
            raise InvalidArgumentError("embedding contains NaN or infinity")
        if norm == 0.0:
            raise InvalidArgumentError("embedding is all zeros")
        vector /= norm
        return vector.astype(np.float32)

    def _check_query(self, query: str, has_embedding: bool) -> str:
        size = len(query.encode("utf-8", "surrogatepass"))
        if size > self.settings.max_query_bytes:
            raise ResourceExhaustedError(
                f"query is {size} bytes; the limit is {self.settings.max_query_bytes} (max_query_bytes)"
            )
        normalized = normalize_query(query)
        if not normalized and not has_embedding:
            raise InvalidArgumentError("query is empty and no embedding was given")
        return normalized

    def _threshold(self, namespace: str, min_similarity: float | None) -> float:
        """The request's value, else the namespace's run-time value, else the settings'."""
        if min_similarity is None:
            return self.namespace_threshold(namespace)
        _check_similarity(min_similarity)
        return float(min_similarity)

    def namespace_threshold(self, namespace: str) -> float:
        runtime = self._namespace_thresholds.get(namespace)
        return self.settings.min_similarity_for(namespace) if runtime is None else runtime

    def set_namespace_threshold(self, namespace: str, min_similarity: float | None) -> float:
        """Set (None: clear) a namespace's threshold, persisted; returns the one now in force."""
        if min_similarity is not None:
            _check_similarity(min_similarity)
        with self._write_lock:
            thresholds = dict(self._namespace_thresholds)
            if min_similarity is None:
                thresholds.pop(namespace, None)
            else:
                thresholds[namespace] = float(min_similarity)
            with self._store.write() as txn:
                self._store.put_meta(txn, "namespace_thresholds", json.dumps(thresholds, sort_keys=True))
            self._namespace_thresholds = thresholds
        return self.namespace_threshold(namespace)

    def _embed(self, query: str, deadline: float | None) -> np.ndarray:
        return self._embed_many([query], deadline)[0]

    def _embed_many(self, texts: Sequence[str], deadline: float | None) -> np.ndarray:
        """The texts' vectors; DeadlineExceededError, without running the model, once
        `deadline` (time.monotonic()) has passed."""
        if self.embedder is None:
            raise FailedPreconditionError(_NO_MODEL)
        try:
            with self.metrics.embed_seconds.time():
                return self.embedder.embed(texts, deadline)
        except DeadlineExceededError:
            self.metrics.shed_deadline.inc()
            raise

    def _check_metadata(self, metadata: Mapping[str, str]) -> None:
        if len(metadata) > self.settings.max_metadata_entries:
            raise ResourceExhaustedError(
                f"metadata has {len(metadata)} entries; the limit is {self.settings.max_metadata_entries}"
            )
        size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
        if size > self.settings.max_metadata_bytes:
            raise ResourceExhaustedError(
                f"metadata is {size} bytes; the limit is {self.settings.max_metadata_bytes} (max_metadata_bytes)"
            )

    # -- lookup ---------------------------------------------------------------

    def lookup(
        self,
        key: PartitionKey,
        query: str,
        embedding: Sequence[float] | np.ndarray | None = None,
        min_similarity: float | None = None,
        deadline: float | None = None,
    ) -> LookupResult:
        """The stored response for this query, or a miss. Never crosses partitions.
        deadline: time.monotonic() past which the caller has given up (see _embed_many)."""
        started = time.perf_counter()
        result = self._lookup(key, query, embedding, min_similarity, deadline)
        outcome = "miss" if not result.hit else "exact_hit" if result.exact else "semantic_hit"
        self.metrics.observe_lookup(key.namespace, outcome, time.perf_counter() - started)
        return result

    def _lookup(
        self,
        key: PartitionKey,
        query: str,
        embedding: Sequence[float] | np.ndarray | None,
        min_similarity: float | None,
        deadline: float | None,
    ) -> LookupResult:
        vector = self._vector(embedding)
        normalized = self._check_query(query, vector is not None)
        threshold = self._threshold(key.namespace, min_similarity)
        partition = self._by_key.get(key)
        if partition is None:
            self._count_lookup(None, "miss")
            return LookupResult(hit=False, threshold=threshold, resolved_version=key.version)
        now = self.clock()
        if normalized:
            result = self._lookup_exact(partition, normalized, threshold, now)
            if result is not None:
                return result
        if vector is None:
            if self.embedder is None:  # no model and no client vector: the exact tier was all there is
                self._count_lookup(partition, "miss", now=now)
                return LookupResult(hit=False, threshold=threshold, resolved_version=key.version)
            vector = self._embed(query, deadline)
        guard_text = query if normalized and self.settings.semantic_guard_for(key.namespace) else ""
        return self._lookup_semantic(partition, vector, threshold, now, guard_text)

    def _lookup_exact(self, partition: _Partition, normalized: str, threshold: float, now: float) -> LookupResult | None:
        with self._store.read() as txn:
            entry_id = self._store.find_exact(txn, partition.id, normalized)
            record = None if entry_id is None else self._store.get_entry(txn, entry_id)
        if record is None or record.normalized_query != normalized or self._expired(entry_id, record, now):
            return None
        self._count_lookup(partition, "exact_hits", entry_id=entry_id, record=record, now=now)
        return self._hit(partition, entry_id, record, 1.0, threshold, exact=True)

    def _lookup_semantic(
        self, partition: _Partition, vector: np.ndarray, threshold: float, now: float, guard_text: str
    ) -> LookupResult:
        """The best live candidate at or above the threshold that the guard lets through.

        guard_text: the query, when the lexical guard applies ("" turns it off).
        """
        k = _SEARCH_K
        best: float | None = None  # the best live candidate's similarity, for misses
        guard_reason = ""
        seen = 0
        while True:
            with self.metrics.search_seconds.time():
                candidates = partition.index.search(vector, k)
            with self._store.read() as txn:
                for entry_id, similarity in candidates[seen:]:
                    record = self._store.get_entry(txn, entry_id)
                    if record is None or record.partition_id != partition.id or self._expired(entry_id, record, now):
                        continue
                    if best is None:
                        best = similarity
                    if similarity < threshold:
                        return self._miss(partition, threshold, best, guard_reason, now)
                    reason = conflict(guard_text, record.query) if guard_text and record.query else None
                    if reason is not None:
                        guard_reason = guard_reason or reason
                        continue
                    self._count_lookup(partition, "semantic_hits", entry_id=entry_id, record=record, now=now)
                    return self._hit(partition, entry_id, record, similarity, threshold, exact=False)
            if len(candidates) < k:  # every vector in the index was seen
                return self._miss(partition, threshold, best, guard_reason, now)
            seen = len(candidates)
            k *= 4

    def _miss(self, partition: _Partition, threshold: float, best: float | None, guard_reason: str, now: float) -> LookupResult:
        self._count_lookup(partition, "miss", now=now)
        return LookupResult(
            hit=False, threshold=threshold, resolved_version=partition.key.version, similarity=best,
            guard_reason=guard_reason,
        )

    def _expired(self, entry_id: int, record: EntryRecord, now: float) -> bool:
        if record.expires_at == 0:
            return False
        return max(record.expires_at, self._pending_expiry.get(entry_id, 0.0)) <= now

    def _hit(
        self, partition: _Partition, entry_id: int, record: EntryRecord, similarity: float, threshold: float, *, exact: bool
    ) -> LookupResult:
        return LookupResult(
            hit=True,
            threshold=threshold,
            resolved_version=partition.key.version,
            entry_id=format_entry_id(entry_id),
            response=record.response,
            similarity=similarity,
            matched_query=record.query,
            exact=exact,
            metadata=record.metadata,  # the record is this lookup's own copy: no need for another
        )

    def _count_lookup(
        self,
        partition: _Partition | None,
        outcome: str,
        *,
        entry_id: int = 0,
        record: EntryRecord | None = None,
        now: float = 0.0,
    ) -> None:
        """Count a lookup; for a hit ("exact_hits"/"semantic_hits") also its LFU hit and sliding TTL."""
        records = [self._totals] if partition is None else [self._totals, partition.record]
        with self._stats_lock:
            for counters in records:
                counters.lookups += 1
                if outcome == "miss":
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
            score = self._policy.hit(entry_id, now)
            count = self._pending_hits.get(entry_id, (0, 0.0, None))[0]
            self._pending_hits[entry_id] = (count + 1, now, score)
            if record.ttl_seconds and self.settings.sliding_ttl_for(partition.key.namespace):
                self._pending_expiry[entry_id] = now + record.ttl_seconds

    # -- store ------------------------------------------------------------------

    def store(
        self,
        key: PartitionKey,
        query: str,
        response: bytes,
        *,
        embedding: Sequence[float] | np.ndarray | None = None,
        ttl_seconds: int = 0,
        metadata: Mapping[str, str] | None = None,
        cost: float = 0.0,
        deadline: float | None = None,
    ) -> StoreResult:
        """Store a response; returns once it is committed to LMDB.

        Evicts least-frequently-used entries first when a budget would be exceeded,
        and when LMDB is at max_map_bytes. A deadline (time.monotonic()) that passes
        while the query waits for the model stores nothing (DeadlineExceededError).
        """
        job = self._prepare_store(key, query, response, embedding, ttl_seconds, metadata, cost)
        if job.vector.size == 0:
            job.vector = self._embed(query, deadline)
            job.record.embedding = job.vector.tobytes()
        self.metrics.count_stores(key.namespace)
        return self._commit_with_room(job)

    def store_batch(self, items: Sequence[StoreItem], deadline: float | None = None) -> list[StoreResult | SemcacheError]:
        """Store many entries: one model call for those without a vector, one commit for all.
        Each item gets its own result or its own error; a deadline that passes before the
        model runs stores nothing (DeadlineExceededError)."""
        jobs: list[_StoreJob | SemcacheError] = []
        for item in items:
            try:
                jobs.append(self._prepare_store(
                    item.key, item.query, item.response, item.embedding, item.ttl_seconds, item.metadata, item.cost
                ))
            except SemcacheError as e:
                jobs.append(e)
        # _prepare_store already refused text-only jobs on a server without a model.
        to_embed = [j for j in jobs if isinstance(j, _StoreJob) and j.vector.size == 0]
        if to_embed:
            for job, vector in zip(to_embed, self._embed_many([j.record.query for j in to_embed], deadline)):
                job.vector = vector
                job.record.embedding = vector.tobytes()
        pending = [j for j in jobs if isinstance(j, _StoreJob)]
        for job in pending:
            self.metrics.count_stores(job.key.namespace)
        self._group_commit(pending)
        results: list[StoreResult | SemcacheError] = []
        for job in jobs:
            if isinstance(job, SemcacheError):
                results.append(job)
            elif job.error is None:
                assert job.result is not None
                results.append(job.result)
            elif isinstance(job.error, StorageFullError):  # retry alone, evicting for room
                job.done, job.error = False, None
                try:
                    results.append(self._commit_with_room(job))
                except SemcacheError as e:
                    results.append(e)
            elif isinstance(job.error, SemcacheError):
                results.append(job.error)
            else:
                raise job.error
        return results

    def _commit_with_room(self, job: _StoreJob) -> StoreResult:
        for _ in range(_FULL_RETRIES):
            try:
                return self._store_once(job)
            except StorageFullError:
                if not self._evict_for_space():
                    raise
                job.done, job.error = False, None
        raise StorageFullError("storage is full (max_map_bytes reached) and eviction did not make room")

    def _prepare_store(
        self,
        key: PartitionKey,
        query: str,
        response: bytes,
        embedding: Sequence[float] | np.ndarray | None,
        ttl_seconds: int,
        metadata: Mapping[str, str] | None,
        cost: float,
    ) -> _StoreJob:
        """Validate a Store; the job's vector is empty when the model must compute it."""
        metadata = dict(metadata or {})
        vector = self._vector(embedding)
        normalized = self._check_query(query, vector is not None)
        if len(response) > self.settings.max_response_bytes:
            raise ResourceExhaustedError(
                f"response is {len(response)} bytes; the limit is {self.settings.max_response_bytes} (max_response_bytes)"
            )
        self._check_metadata(metadata)
        if not (math.isfinite(cost) and cost >= 0):
            raise InvalidArgumentError(f"cost must be a finite number >= 0, got {cost}")
        if ttl_seconds < 0:
            raise InvalidArgumentError(f"ttl_seconds must be >= 0, got {ttl_seconds}")
        if vector is None and self.embedder is None:
            raise FailedPreconditionError(_NO_MODEL)
        ttl = ttl_seconds or self.settings.default_ttl_seconds_for(key.namespace)
        record = EntryRecord(
            query=query,
            normalized_query=normalized,
            response=bytes(response),
            embedding=b"" if vector is None else vector.astype(np.float32).tobytes(),
            metadata=metadata,
            cost=cost,
            ttl_seconds=ttl,
        )
        # The vector's bytes count whether or not the client sent it.
        size = entry_bytes(record) + (4 * self.dimension if vector is None else 0)
        budget_bytes = self._policy.too_large(key.namespace, size)
        if budget_bytes:
            raise ResourceExhaustedError(f"entry is {size} bytes; the byte budget of its scope is {budget_bytes}")
        empty = np.empty(0, dtype=np.float32)
        return _StoreJob(key, record, empty if vector is None else vector, size)

    def _store_once(self, job: _StoreJob) -> StoreResult:
        self._group_commit([job])
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _group_commit(self, jobs: list[_StoreJob]) -> None:
        """Commit these jobs together with every other queued one in one LMDB transaction
        (one fsync). Returns when all of these jobs are done.

        Leader/follower: one call at a time leads, taking the whole queue into one commit;
        calls arriving meanwhile queue up and sleep on their own Event. The leader wakes
        exactly the calls it committed and makes the oldest queued call the next leader.
        (Followers used to wait on the write lock itself: one whose Store was already
        committed could lose the lock to a new leader and wait out another whole sync.)
        """
        if not jobs:
            return
        call = _StoreCall(jobs)
        with self._queue_lock:
            self._store_queue.append(call)
            if not self._committing:
                self._committing = True
                call.lead = True
        while True:
            if call.lead:
                self._lead_commit(call)
            elif all(job.done for job in jobs):
                return
            else:
                call.wake.wait()
                call.wake.clear()

    def _lead_commit(self, leader: _StoreCall) -> None:
        """Commit every queued call (the leader's own among them), wake them, pass the lead on."""
        calls: list[_StoreCall] = []
        retired: list[_Partition] = []
        try:
            with self._write_lock:
                with self._queue_lock:
                    calls, self._store_queue = self._store_queue, []
                retired = self._commit_batch([job for queued in calls for job in queued.jobs])
        finally:
            with self._queue_lock:
                leader.lead = False
                for queued in calls:
                    for job in queued.jobs:
                        if not job.done:  # _commit_batch raised: never leave a caller waiting
                            job.error, job.done = SemcacheError("the commit failed; see the server log"), True
                    queued.wake.set()
                if self._store_queue:
                    successor = self._store_queue[0]
                    successor.lead = True
                    successor.wake.set()
                else:
                    self._committing = False
        for old in retired:
            log.info("retiring partition %s: over max_versions_per_model", old.key)
            self._purge_in_background(old.id)

    def _commit_batch(self, batch: list[_StoreJob]) -> list[_Partition]:
        """Apply each job in a nested transaction (a failing job fails alone), commit once,
        then update indexes. Needs _write_lock. Returns the partitions retired."""
        now = self.clock()
        applied: list[_Applied] = []
        new_partitions: dict[PartitionKey, _Partition] = {}
        retired_ids: set[int] = set()
        try:
            with self._store.write() as txn:
                for job in batch:
                    try:
                        with self._store.nested(txn) as child:
                            done = self._apply_store(child, job, now, new_partitions, retired_ids)
                    except BaseException as e:
                        job.error, job.done = e, True
                        continue
                    applied.append(done)
                    if done.is_new:
                        new_partitions[job.key] = done.partition
                    retired_ids.update(p.id for p in done.retired)
        except BaseException as e:  # the commit itself failed: nothing of the batch is stored
            with self._stats_lock:
                for done in reversed(applied):
                    done.undo(self._policy)
            for done in applied:
                done.job.error, done.job.done = e, True
            return []
        self.store_commits += 1
        self.metrics.store_commits.inc()
        retired: list[_Partition] = []
        updates = _IndexUpdates()
        for done in applied:
            self._after_commit(done, now, updates)
            retired.extend(done.retired)
        updates.flush()  # every vector is searchable before any Store of the batch is acknowledged
        for done in applied:
            done.job.done = True
        return retired

    def _apply_store(
        self, txn, job: _StoreJob, now: float, new_partitions: dict[PartitionKey, _Partition], retired_ids: set[int]
    ) -> _Applied:
        """The LMDB and eviction-policy part of one Store, inside the batch's transaction."""
        record = job.record
        record.created_at = now
        record.expires_at = now + record.ttl_seconds if record.ttl_seconds else 0.0
        partition, is_new, retired = self._partition_for_store(txn, job.key, now, new_partitions, retired_ids)
        record.partition_id = partition.id
        done = _Applied(job, partition, is_new, retired)
        try:
            if record.normalized_query:
                done.replaced_id = self._store.find_exact(txn, partition.id, record.normalized_query)
            if done.replaced_id is not None:
                done.replaced = self._store.get_entry(txn, done.replaced_id)
                if done.replaced is not None:
                    self._store.delete_entry(txn, done.replaced_id, done.replaced)
            with self._stats_lock:
                if done.replaced is not None:
                    done.replaced_victim = self._policy.remove(done.replaced_id)
                done.victims = self._policy.choose_victims(job.key.namespace, job.size)
            for victim in done.victims:
                victim_record = self._store.get_entry(txn, victim.entry_id)
                if victim_record is not None:
                    self._store.delete_entry(txn, victim.entry_id, victim_record)
                    done.evicted.append((victim.entry_id, victim_record))
            done.entry_id = self._store.next_id(txn, _ENTRY_ID_COUNTER)
            self._store.put_entry(txn, done.entry_id, record)
            with self._stats_lock:
                self._policy.add(job.key.namespace, done.entry_id, job.size, now)
        except BaseException:
            with self._stats_lock:
                done.undo(self._policy)
            raise
        return done

    def _after_commit(self, done: _Applied, now: float, updates: _IndexUpdates) -> None:
        """Make a committed Store visible: partitions, index rows (through `updates`), byte
        counts. Needs _write_lock."""
        partition, job = done.partition, done.job
        if done.is_new:
            self._publish(partition)
        for old in done.retired:
            self._unpublish(old)
        if done.replaced is not None:
            updates.remove(partition.index, [done.replaced_id])
            partition.bytes -= entry_bytes(done.replaced)
        self._forget(done.evicted, "evictions", updates)
        updates.add(partition.index, done.entry_id, job.vector)
        partition.bytes += job.size
        with self._stats_lock:
            partition.record.last_used_at = now
            partition.dirty = True
        job.result = StoreResult(
            entry_id=format_entry_id(done.entry_id),
            replaced=done.replaced is not None,
            expires_at=job.record.expires_at,
            resolved_version=job.key.version,
        )

    def _partition_for_store(
        self, txn, key: PartitionKey, now: float, new_partitions: dict[PartitionKey, _Partition], retired_ids: set[int]
    ) -> tuple[_Partition, bool, list[_Partition]]:
        """(partition, is_new, retired): the live partition for key (or one this batch created),
        or a new one created in txn and made visible after the commit.

        A new version beyond max_versions_per_model retires the least recently used
        versions of the same namespace+model, in the same transaction.
        """
        partition = new_partitions.get(key) or self._by_key.get(key)
        if partition is not None and partition.id not in retired_ids:
            return partition, False, []
        retired: list[_Partition] = []
        limit = self.settings.max_versions_per_model
        if limit:
            published = self._versions.get((key.namespace, key.model), {}).values()
            created = [p for p in new_partitions.values() if (p.key.namespace, p.key.model) == (key.namespace, key.model)]
            siblings = [p for p in itertools.chain(published, created) if p.id not in retired_ids]
            if len(siblings) >= limit:
                siblings.sort(key=lambda p: p.record.last_used_at)
                retired = siblings[: len(siblings) - limit + 1]
                for old in retired:
                    self._store.mark_partition_dropping(txn, old.id)
        partition_id = self._store.next_id(txn, "next_partition_id")
        record = PartitionRecord(
            namespace=key.namespace, model=key.model, version=key.version, created_at=now, last_used_at=now
        )
        self._store.put_partition(txn, partition_id, record)
        partition = _Partition(partition_id, key, PartitionRecord.FromString(record.SerializeToString()), self.settings, self.dimension)
        return partition, True, retired

    # -- removal ------------------------------------------------------------------

    def _forget(
        self, removed: Sequence[tuple[int, EntryRecord]], reason: str | None, updates: _IndexUpdates | None = None
    ) -> None:
        """After a commit that deleted these entries: drop them from indexes (now, or through
        `updates`), policy and byte counts, and count them under `reason` ("evictions",
        "expirations", "invalidations"). Needs _write_lock."""
        by_partition: dict[int, list[int]] = {}
        with self._stats_lock:
            for entry_id, record in removed:
                self._policy.remove(entry_id)
                self._pending_expiry.pop(entry_id, None)
                partition = self._by_id.get(record.partition_id)
                if reason:
                    setattr(self._totals, reason, getattr(self._totals, reason) + 1)
                if partition is None:
                    continue
                by_partition.setdefault(partition.id, []).append(entry_id)
                partition.bytes -= entry_bytes(record)
                if reason:
                    setattr(partition.record, reason, getattr(partition.record, reason) + 1)
                    partition.dirty = True
        updates = updates or _IndexUpdates()  # nothing pending: its removals apply at once
        for partition_id, ids in by_partition.items():
            updates.remove(self._by_id[partition_id].index, ids)

    def _delete_entry_ids(
        self,
        entry_ids: Sequence[int],
        *,
        reason: str | None,
        still: Callable[[int, EntryRecord], bool] | None = None,
    ) -> int:
        """Delete entries in chunks of one transaction each; `still` re-checks each one inside
        the transaction. Returns how many were deleted."""
        deleted = 0
        for start in range(0, len(entry_ids), _DELETE_CHUNK):
            chunk = entry_ids[start:start + _DELETE_CHUNK]
            with self._write_lock:
                removed: list[tuple[int, EntryRecord]] = []
                with self._store.write() as txn:
                    for entry_id in chunk:
                        record = self._store.get_entry(txn, entry_id)
                        if record is not None and (still is None or still(entry_id, record)):
                            self._store.delete_entry(txn, entry_id, record)
                            removed.append((entry_id, record))
                self._forget(removed, reason)
            deleted += len(removed)
        return deleted

    def _evict_for_space(self) -> bool:
        """LMDB is full: evict a batch of the least valuable entries. False when there is none."""
        with self._stats_lock:
            count = max(1, int(self._policy.entries * _FULL_EVICT_FRACTION))
            victims = self._policy.lowest(count)
        if not victims:
            return False
        log.warning("storage full (max_map_bytes or the data volume): evicting %d entries", len(victims))
        return self._delete_entry_ids([v.entry_id for v in victims], reason="evictions") > 0

    def delete(self, key: PartitionKey, entry_id_text: str) -> bool:
        """Remove one entry of this partition; False when there is no such entry in it."""
        entry_id = parse_entry_id(entry_id_text)
        partition = self._by_key.get(key)
        if partition is None:
            return False
        return self._delete_entry_ids([entry_id], reason=None, still=lambda _, r: r.partition_id == partition.id) == 1

    def invalidate(
        self,
        key: PartitionKey,
        *,
        all_versions: bool = False,
        whole_namespace: bool = False,
        metadata_match: Mapping[str, str] | None = None,
    ) -> int:
        """Remove every entry in a scope; with metadata_match only those whose metadata has
        every given pair. Returns how many entries were removed."""
        if whole_namespace:
            targets = [p for k, p in list(self._by_key.items()) if k.namespace == key.namespace]
        elif all_versions:
            targets = [p for k, p in list(self._by_key.items()) if (k.namespace, k.model) == (key.namespace, key.model)]
        else:
            partition = self._by_key.get(key)
            targets = [] if partition is None else [partition]
        if not metadata_match:
            return sum(self._drop_partition(p) for p in targets)
        match = dict(metadata_match)

        def matches(_: int, record: EntryRecord) -> bool:
            return all(record.metadata.get(k) == v for k, v in match.items())

        removed = 0
        for partition in targets:
            with self._store.read() as txn:
                ids = [
                    entry_id for entry_id in self._store.iter_partition_entry_ids(txn, partition.id)
                    if (record := self._store.get_entry(txn, entry_id)) is not None and matches(entry_id, record)
                ]
            removed += self._delete_entry_ids(ids, reason="invalidations", still=matches)
        return removed

    def _drop_partition(self, partition: _Partition) -> int:
        with self._write_lock:
            if self._by_id.get(partition.id) is not partition:
                return 0  # dropped concurrently
            with self._store.write() as txn:
                self._store.mark_partition_dropping(txn, partition.id)
            # Unreachable from here on: lookups miss at once, a Store starts a new partition.
            self._unpublish(partition)
        return self._purge_partition(partition.id)

    def _purge_in_background(self, partition_id: int) -> None:
        thread = threading.Thread(target=self._purge_partition, args=(partition_id,), name="semcache-purge", daemon=True)
        with self._stats_lock:
            self._purges = [t for t in self._purges if t.is_alive()]
            self._purges.append(thread)
        thread.start()

    def wait_for_purges(self) -> None:
        """Block until retired partitions are fully removed from LMDB."""
        with self._stats_lock:
            purges = list(self._purges)
        for thread in purges:
            thread.join()

    def _purge_partition(self, partition_id: int) -> int:
        """Remove a dropping partition's entries in chunks, then the partition itself."""
        removed = 0
        while True:
            with self._write_lock:
                deleted: list[tuple[int, EntryRecord]] = []
                with self._store.write() as txn:
                    chunk = list(itertools.islice(self._store.iter_partition_entry_ids(txn, partition_id), _DELETE_CHUNK))
                    for entry_id in chunk:
                        record = self._store.get_entry(txn, entry_id)
                        if record is not None:
                            self._store.delete_entry(txn, entry_id, record)
                            deleted.append((entry_id, record))
                    if not chunk:
                        self._store.delete_partition(txn, partition_id)
                self._forget(deleted, "invalidations")
            removed += len(chunk)
            if not chunk:
                return removed

    # -- maintenance ----------------------------------------------------------------

    def sweep_expired(self) -> int:
        """Remove every entry whose TTL has run out. Returns how many."""
        self.flush_stats()  # sliding-TTL extensions reach LMDB first
        now = self.clock()
        with self._store.read() as txn:
            expired = list(self._store.iter_expired(txn, now))
        return self._delete_entry_ids(expired, reason="expirations", still=lambda i, r: self._expired(i, r, now))

    def flush_stats(self) -> None:
        """Write pending hit counts, LFU scores, sliding expiries and counters to LMDB."""
        with self._stats_lock:
            pending, self._pending_hits = self._pending_hits, {}
            expiries = dict(self._pending_expiry)
            dirty = [p for p in self._by_id.values() if p.dirty]
            for partition in dirty:
                partition.dirty = False
            snapshots = [(p.id, PartitionRecord.FromString(p.record.SerializeToString())) for p in dirty]
            totals = self._totals.SerializeToString()
        if not pending and not dirty and not expiries:
            return
        with self._write_lock:
            with self._store.write() as txn:
                for entry_id, (count, last_hit_at, score) in pending.items():
                    hits = self._entry_hits(txn, entry_id)
                    if hits is None:  # deleted since
                        continue
                    hits.hit_count += count
                    hits.last_hit_at = last_hit_at
                    if score is not None:
                        hits.lfu_score = score
                    self._store.put_hits(txn, entry_id, hits)
                for entry_id, expiry in expiries.items():  # the expiry index moves too: rewrite the entry
                    old = self._store.get_entry(txn, entry_id)
                    if old is None or not old.expires_at or old.expires_at >= expiry:
                        continue
                    new = EntryRecord.FromString(old.SerializeToString())
                    new.expires_at = expiry
                    self._store.update_entry(txn, entry_id, old, new)
                for partition_id, counters in snapshots:
                    stored = self._store.get_partition(txn, partition_id)
                    if stored is None or stored.dropping:
                        continue
                    stored.MergeFrom(counters)
                    self._store.put_partition(txn, partition_id, stored)
                self._store.put_meta(txn, "totals", totals.hex())
        with self._stats_lock:  # flushed extensions now live in LMDB
            for entry_id, expiry in expiries.items():
                if self._pending_expiry.get(entry_id) == expiry:
                    del self._pending_expiry[entry_id]

    def _entry_hits(self, txn, entry_id: int) -> EntryHits | None:  # type: ignore[no-untyped-def]
        """The entry's hit statistics; seeded from its record when a version before the
        entry_hits table stored them there. None when the entry is gone."""
        hits = self._store.get_hits(txn, entry_id)
        if hits is not None:
            return hits
        if entry_id >= self._hits_table_from_entry_id:  # its record never held counts: skip reading it
            return EntryHits() if self._store.has_entry(txn, entry_id) else None
        record = self._store.get_entry(txn, entry_id)
        if record is None:
            return None
        return EntryHits(hit_count=record.hit_count, last_hit_at=record.last_hit_at, lfu_score=record.lfu_score)

    # -- stats ---------------------------------------------------------------------

    def stats(
        self,
        namespace: str | None = None,
        model: str = "",
        version: str = "",
        *,
        allowed: Callable[[str], bool] | None = None,
        listed: int | None = None,
    ) -> StatsView:
        """Counters for the server (namespace None) or for partitions matching the filter.

        With `allowed`, only partitions of namespaces it accepts are seen, and the
        totals are their sums (the server totals would tell about other tenants).
        `listed`: at most this many partitions in the view's list (None: all), so a
        server with a namespace per tenant neither copies every partition's record
        under the lock Lookups need nor sends them all.
        """
        if namespace is None:
            candidates = list(self._by_id.values())
        elif model:
            candidates = list(self._versions.get((namespace, model), {}).values())
        else:
            candidates = [p for p in list(self._by_id.values()) if p.key.namespace == namespace]
        selected = [
            p for p in candidates
            if (not version or p.key.version == version) and (allowed is None or allowed(p.key.namespace))
        ]
        # Sorted only when listed: a scrape and the start-up line list none.
        shown = [] if listed == 0 else sorted(selected, key=lambda p: p.key)[:listed]
        with self._stats_lock:
            views = [
                PartitionStatsView(p.key, len(p.index), p.bytes, PartitionRecord.FromString(p.record.SerializeToString()))
                for p in shown
            ]
            if namespace is None and allowed is None:
                totals = PartitionRecord.FromString(self._totals.SerializeToString())
            else:
                sums = dict.fromkeys(COUNTERS, 0)
                for p in selected:
                    record = p.record
                    for name in COUNTERS:
                        sums[name] += getattr(record, name)
                totals = PartitionRecord(**sums)
        return StatsView(
            entries=sum(len(p.index) for p in selected), bytes=sum(p.bytes for p in selected), totals=totals,
            partitions=views, partitions_total=len(selected),
        )

    def check_consistency(self) -> list[str]:
        """Disagreements between LMDB and the in-memory indexes and policy; [] when they agree."""
        problems = []
        with self._write_lock, self._store.read() as txn:
            stored: dict[int, int] = {}
            for entry_id, record in self._store.iter_entries(txn):
                stored[record.partition_id] = stored.get(record.partition_id, 0) + 1
                if entry_id not in self._policy:
                    problems.append(f"entry {entry_id} is in LMDB but not tracked for eviction")
            for partition_id, partition in self._by_id.items():
                if stored.get(partition_id, 0) != len(partition.index):
                    problems.append(
                        f"partition {partition.key}: {stored.get(partition_id, 0)} entries in LMDB, {len(partition.index)} in its index"
                    )
            for partition_id, count in stored.items():
                if partition_id not in self._by_id:
                    problems.append(f"{count} entries in LMDB belong to no live partition {partition_id}")
            if self._policy.entries != sum(stored.values()):
                problems.append(f"{self._policy.entries} entries tracked for eviction, {sum(stored.values())} in LMDB")
            orphan_hits = self._store.count_orphan_hits(txn)
            if orphan_hits:
                problems.append(f"{orphan_hits} hit-statistics rows belong to no entry")
        return problems
