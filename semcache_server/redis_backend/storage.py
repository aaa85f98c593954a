"""`RedisStorage`: the cache's state on Redis Cluster, shared by every frontend.

Redis holds every entry (its record with a Redis expiry at its TTL), the exact tier, the
vectors, each partition's counters and change log, and the server-wide registry of
partitions and settings (keys.py). A Store is one Lua script on the partition's shard
(scripts.py), acknowledged once Redis has it under its own durability policy (AOF
`appendfsync`) and, with `redis_wait_replicas`, once that many replicas have it (WAIT).

A frontend keeps nothing that matters: each partition it serves is a FAISS replica
(replica.py), loaded from Redis on first use and kept current by reading the partition's
change log as soon as pub/sub announces a change (notifications.py: `ReplicaFeed`), and every
`redis_poll_interval_seconds` besides, in case an announcement was lost. A candidate's record is always read from
Redis, so one that expired, was evicted or invalidated is a miss at once, whatever the
replica still holds; an Invalidate deletes the records before it returns.

Eviction is Redis' own: every entry record carries an expiry (entries without a TTL one
~100 years out), so `maxmemory-policy volatile-lfu` evicts entries by LFU and never the
structures; semcache's max_entries / max_bytes budgets are not used with this backend.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from semcache_server import ttl
from semcache_server.decision import Candidate
from semcache_server.entries import COUNTERS, PartitionStatsView, StatsView, StoreResult
from semcache_server.errors import ConfigError, SemcacheError
from semcache_server.group_commit import StoreJob
from semcache_server.key_fingerprint import NO_FILTER, CandidateFilter, record_exact_suffix
from semcache_server.lookup_ids import new_key
from semcache_server.partition import PartitionKey
from semcache_server.redis_backend.connection import connect, parse_backend, redact, redis_errors, warn_about_eviction_policy
from semcache_server.redis_backend.counters import PendingCounters, record_from_hash
from semcache_server.redis_backend.keys import (
    FORMAT,
    META,
    REGISTRY,
    TOTALS,
    PartitionKeys,
    exact_key,
    registry_key,
)
from semcache_server.redis_backend.notifications import ReplicaFeed
from semcache_server.redis_backend.reclaim import Reclaimer
from semcache_server.redis_backend.replica import RedisCandidates, RedisPartition
from semcache_server.redis_backend.writer import REMOVE_CHUNK, RedisWriter
from semcache_server.settings import Settings
from semcache_server.v1.records_pb2 import EntryRecord

log = logging.getLogger("semcache")

_CALIBRATION = "calibration:"


class RedisStorage:
    """Implements `semcache_server.storage.CacheStorage` on Redis Cluster."""

    def __init__(self, settings: Settings, dimension: int, embedding_model: str, clock: Callable[[], float]) -> None:
        started = time.monotonic()
        self._settings = settings
        self._dimension = dimension
        self._clock = clock
        self.client = connect(parse_backend(settings.backend), settings.redis_timeout_seconds)
        try:
            meta = self._check_meta(dimension, embedding_model)
            warn_about_eviction_policy(self.client)
        except BaseException:
            self.client.close()
            raise
        self.namespace_thresholds: Mapping[str, float] = json.loads(meta.get(b"namespace_thresholds", b"{}"))
        self.lookup_id_key = bytes.fromhex(meta[b"lookup_id_key"].decode())
        self.calibrations: Mapping[str, str] = {
            name.decode()[len(_CALIBRATION):]: value.decode()
            for name, value in meta.items() if name.startswith(_CALIBRATION.encode())
        }
        self._partitions: dict[PartitionKey, RedisPartition] = {}
        self._by_tag: dict[str, RedisPartition] = {}
        self._written: dict[str, PartitionKeys] = {}  # partitions this frontend stored to: its sweep's too
        self._thresholds_seen = meta.get(b"namespace_thresholds", b"{}")
        self._thresholds_changed: Callable[[Mapping[str, float]], None] | None = None
        self._feed = ReplicaFeed(self.client, settings.redis_poll_interval_seconds)
        self._load_lock = threading.Lock()
        self._counters = PendingCounters()
        self.writer = RedisWriter(self.client, settings, clock, self._by_tag, lambda: self._counters.flush(self.client))
        self._reclaimer = Reclaimer(self.client, self.writer)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.recovery_seconds = time.monotonic() - started
        log.info("redis backend: %s", redact(settings.backend))

    def _check_meta(self, dimension: int, embedding_model: str) -> dict[bytes, bytes]:
        with redis_errors("reads the cache's settings"):
            self.client.hsetnx(META, "format", FORMAT)
            self.client.hsetnx(META, "dimension", str(dimension))
            self.client.hsetnx(META, "embedding_model", embedding_model)
            self.client.hsetnx(META, "lookup_id_key", new_key().hex())  # the first frontend's; all share it
            meta = self.client.hgetall(META)
        stored = (meta[b"embedding_model"].decode(), int(meta[b"dimension"]))
        if meta[b"format"] != FORMAT.encode() or stored != (embedding_model, dimension):
            raise ConfigError(
                f"the cache on Redis ({redact(self._settings.backend)}) holds vectors of embedding model "
                f"{stored[0]!r} ({stored[1]} dims), format {meta[b'format'].decode()}; this server uses "
                f"{embedding_model!r} ({dimension} dims). Point it at another cluster, or empty this one."
            )
        return meta

    # -- partitions -------------------------------------------------------------------

    def partition(self, key: PartitionKey) -> RedisPartition | None:
        partition = self._partitions.get(key)
        if partition is not None:
            return partition
        keys = PartitionKeys.of(key)
        with redis_errors("finds a partition"):
            if self.client.hget(keys.meta, "live") != b"1":
                return None
            return self._load(key)

    def _load(self, key: PartitionKey) -> RedisPartition:
        with self._load_lock:
            partition = self._partitions.get(key)
            if partition is None:
                partition = RedisPartition(key, self._settings, self._dimension)
                partition.load(self.client)
                self._partitions[key] = partition
                self._by_tag[partition.keys.tag] = partition
                self._feed.add(partition)
                log.info("loaded partition %s: %d entries in %.2f s", key, len(partition.index), partition.loaded_seconds)
            return partition

    # -- lookups -------------------------------------------------------------------

    def exact_candidate(
        self, partition: RedisPartition, normalized_query: str, now: float, match: CandidateFilter = NO_FILTER,
    ) -> Candidate | None:
        keys = partition.keys
        with redis_errors("reads the exact tier"):
            entry_id = self.client.hget(keys.exact, exact_key(normalized_query, match.exact_suffix))
            value = None if entry_id is None else self.client.get(keys.entry(int(entry_id)))
        if entry_id is None or value is None:
            return None
        record = EntryRecord.FromString(value)
        if record.normalized_query != normalized_query or record_exact_suffix(record) != match.exact_suffix:
            return None
        if not match.accepts(record, check_context=False):
            return None
        return Candidate(int(entry_id), record, 1.0)

    def candidates(
        self, partition: RedisPartition, vector: np.ndarray, now: float, match: CandidateFilter = NO_FILTER,
    ) -> RedisCandidates:
        return RedisCandidates(self.client, partition, vector, match)

    def count_lookup(
        self, partition: RedisPartition | None, outcome: str, *, candidate: Candidate | None = None,
        now: float = 0.0, sliding_ttl: bool = False,
    ) -> None:
        cost = candidate.record.cost if candidate is not None else 0.0
        self._counters.lookup(None if partition is None else partition.keys.meta, outcome, cost, now)
        if partition is None or candidate is None:
            return
        extended = ttl.slide(candidate.record.ttl_seconds, sliding_ttl, now)
        if extended is not None:
            try:
                with redis_errors("extends a sliding TTL"):
                    self.client.pexpireat(partition.keys.entry(candidate.entry_id), int(extended * 1000), gt=True)
            except SemcacheError as e:  # the hit is served; only its extension is lost
                log.warning("sliding TTL not extended: %s", e)

    # -- stores ---------------------------------------------------------------------

    def budget_refuses(self, namespace: str, size_bytes: int) -> int:
        return 0  # Redis' maxmemory is the budget (see the module docstring)

    def commit(self, job: StoreJob) -> StoreResult:
        keys = PartitionKeys.of(job.key)
        self._written.setdefault(keys.tag, keys)
        return self.writer.store(job)

    def commit_all(self, jobs: Sequence[StoreJob]) -> list[StoreResult | SemcacheError]:
        results: list[StoreResult | SemcacheError] = []
        for job in jobs:
            try:
                results.append(self.commit(job))
            except SemcacheError as e:
                results.append(e)
        return results

    @property
    def store_commits(self) -> int:
        return self.writer.store_commits

    def entry(self, key: PartitionKey, entry_id: int) -> EntryRecord | None:
        with redis_errors("reads an entry"):
            value = self.client.get(PartitionKeys.of(key).entry(entry_id))
        return None if value is None else EntryRecord.FromString(value)

    def record_verdict(
        self, key: PartitionKey, entry_id: int, correct: bool, change: Callable[[EntryRecord], None] | None,
    ) -> bool:
        self._counters.add(PartitionKeys.of(key).meta, "verdicts_correct" if correct else "verdicts_wrong")
        return self.writer.amend(key, entry_id, change)

    # -- removals and settings ------------------------------------------------------------

    def delete(self, key: PartitionKey, entry_id: int) -> bool:
        return self.writer.remove(PartitionKeys.of(key), [entry_id], "")[0] == 1

    def invalidate(
        self, key: PartitionKey, *, all_versions: bool = False, whole_namespace: bool = False,
        metadata_match: Mapping[str, str] | None = None,
    ) -> int:
        removed = 0
        for target in self.writer.scope(key, all_versions=all_versions, whole_namespace=whole_namespace):
            if metadata_match:
                removed += self.writer.remove(
                    PartitionKeys.of(target), self.writer.matching(target, metadata_match), "invalidations",
                )[0]
            else:
                removed += self.writer.clear(target)
        return removed

    def save_namespace_thresholds(self, thresholds: dict[str, float]) -> None:
        raw = json.dumps(thresholds, sort_keys=True)
        with redis_errors("saves namespace thresholds"):
            self.client.hset(META, "namespace_thresholds", raw)
        self._thresholds_seen = raw.encode()

    def watch_namespace_thresholds(self, changed: Callable[[Mapping[str, float]], None]) -> None:
        self._thresholds_changed = changed

    def _read_namespace_thresholds(self) -> None:
        """SetNamespaceThreshold on another frontend reaches this one within a stats flush."""
        raw = self.client.hget(META, "namespace_thresholds") or b"{}"
        if raw != self._thresholds_seen and self._thresholds_changed is not None:
            self._thresholds_changed(json.loads(raw))
        self._thresholds_seen = raw

    def save_calibration(self, namespace: str, data: str) -> None:
        with redis_errors("saves a calibration"):
            self.client.hset(META, _CALIBRATION + namespace, data)

    def claim_verdict(self, key: PartitionKey, claim: bytes, expires_at: float) -> bool:
        ttl_seconds = max(1, math.ceil(expires_at - self._clock()))
        with redis_errors("claims a verdict"):
            return bool(self.client.set(PartitionKeys.of(key).verdict(claim), b"", nx=True, ex=ttl_seconds))

    # -- reporting and upkeep ---------------------------------------------------------------

    def stats(
        self, namespace: str | None = None, model: str = "", version: str = "", *,
        allowed: Callable[[str], bool] | None = None, listed: int | None = None,
    ) -> StatsView:
        with redis_errors("reads stats"):
            self._counters.flush(self.client)
            registered = [registry_key(v) for v in self.client.hvals(REGISTRY)]
            chosen = [
                k for k in registered
                if (namespace is None or k.namespace == namespace) and (not model or k.model == model)
                and (not version or k.version == version) and (allowed is None or allowed(k.namespace))
            ]
            pipe = self.client.pipeline(transaction=False)
            for k in chosen:
                pipe.hgetall(PartitionKeys.of(k).meta)
                pipe.hlen(PartitionKeys.of(k).ids)
            replies = pipe.execute() if chosen else []
            server_totals = self.client.hgetall(TOTALS) if namespace is None and allowed is None else {}
        totals = record_from_hash(server_totals)
        views = []
        for k, fields, entries in zip(chosen, replies[0::2], replies[1::2], strict=True):
            record = record_from_hash(fields)
            for name in COUNTERS:
                setattr(totals, name, getattr(totals, name) + getattr(record, name))
            if entries or fields.get(b"live") == b"1":
                views.append(PartitionStatsView(k, int(entries), int(fields.get(b"bytes", 0)), record))
        views.sort(key=lambda v: v.key)
        return StatsView(
            entries=sum(v.entries for v in views), bytes=sum(v.bytes for v in views), totals=totals,
            partitions=[] if listed == 0 else views[:listed], partitions_total=len(views),
        )

    def check_consistency(self) -> list[str]:
        """Each loaded replica against Redis' vectors, after reading the change logs."""
        self._feed.poll()
        problems = []
        with redis_errors("checks consistency"):
            for key, partition in list(self._partitions.items()):
                stored = {int(i) for i in self.client.hkeys(partition.keys.vectors)}
                held = {int(i) for i in partition.index.vectors()[0]}
                if stored != held:
                    problems.append(
                        f"partition {key}: replica holds {len(held - stored)} ids Redis lacks and lacks {len(stored - held)}"
                    )
        return problems

    def flush_stats(self) -> None:
        with redis_errors("writes counters"):
            self._counters.flush(self.client)
            self._read_namespace_thresholds()

    def sweep_expired(self) -> int:
        """Entries whose records Redis dropped (expired or evicted) out of the bookkeeping and
        replicas of the partitions this frontend serves or stores to; returns how many had
        expired. (Redis' key events reclaim most of them at once: reclaim.py.)"""
        expired = 0
        swept = {**self._written, **{tag: p.keys for tag, p in list(self._by_tag.items())}}
        with redis_errors("sweeps expired entries"):
            for keys in swept.values():
                cursor = 0
                while True:
                    cursor, page = self.client.hscan(keys.ids, cursor, count=REMOVE_CHUNK)
                    ids = [int(i) for i in page]
                    pipe = self.client.pipeline(transaction=False)
                    for entry_id in ids:
                        pipe.exists(keys.entry(entry_id))
                    gone = [i for i, there in zip(ids, pipe.execute() if ids else [], strict=True) if not there]
                    if gone:
                        expired += self.writer.remove(keys, gone, "")[1]
                    if not cursor:
                        break
                for old in self.client.smembers(keys.olds):  # an invalidation a frontend did not finish
                    self.writer.drop_old(keys, old.decode())
        return expired

    def wait_for_purges(self) -> None:
        return None  # an Invalidate deletes its entries before it returns

    def start_maintenance(self) -> None:
        self._feed.start()
        self._reclaimer.start()
        loops = (
            (self._settings.stats_flush_interval_seconds, self.flush_stats),
            (self._settings.sweep_interval_seconds, self.sweep_expired),
        )
        for interval, work in loops:
            thread = threading.Thread(target=self._every, args=(interval, work), name=f"redis-{work.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _every(self, interval_seconds: float, work: Callable[[], object]) -> None:
        failing = False
        while not self._stop.wait(interval_seconds):
            try:
                work()
                if failing:
                    log.info("redis backend: %s works again", work.__name__)
                failing = False
            except SemcacheError as e:
                if not failing:
                    log.warning("redis backend: %s failed (retrying): %s", work.__name__, e)
                failing = True
            except Exception:
                log.exception("redis backend: %s failed", work.__name__)

    def close(self) -> None:
        self._stop.set()
        self._feed.stop()
        self._reclaimer.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        try:
            self.flush_stats()
        except SemcacheError as e:
            log.warning("counters since the last flush were not written: %s", e)
        self.client.close()
