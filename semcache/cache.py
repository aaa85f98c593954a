"""The cache engine's facade: each Lookup and Store, in order, and nothing else.

    lookup: validate -> partition + policy -> exact tier -> embed -> semantic
            candidates -> decide (guard, threshold, verifier) -> count
    store:  validate -> embed -> commit (grouped, LMDB first) -> count

Storage (LMDB + FAISS) sits behind `semcache.storage.CacheStorage`; the hit decision
is `semcache.decision.decide`; this module alone records metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from semcache import ttl
from semcache.decision import EXACT, NO_CANDIDATE, Candidate, DecisionPolicy, Verdict, decide
from semcache.embedder import Embedder
from semcache.entries import COUNTERS, LookupResult, StatsView, StoreItem, StoreResult, entry_bytes, format_entry_id
from semcache.errors import ConfigError, DeadlineExceededError, FailedPreconditionError, ResourceExhaustedError, SemcacheError
from semcache.group_commit import StoreJob
from semcache.ledger import EXACT_HIT, MISS, SEMANTIC_HIT
from semcache.local_storage import LocalStorage
from semcache.metrics import Metrics
from semcache.partition import PartitionKey
from semcache.settings import Settings
from semcache.storage import CacheStorage, CandidateStream, PartitionHandle
from semcache.thresholds import Thresholds
from semcache.v1.records_pb2 import EntryRecord
from semcache.validation import NO_MODEL, RequestValidator, parse_entry_id
from semcache.verifier.model import Verifier

__all__ = ["COUNTERS", "LookupResult", "SemanticCache", "StatsView", "StoreItem", "StoreResult"]


class SemanticCache:
    """Thread-safe: lookups never wait for writers; writes are serialized by the storage."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder | None,
        *,
        verifier: Verifier | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.verifier = verifier  # None: candidates are decided by cosine (and the guard) alone
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
        self.validator = RequestValidator(settings, self.dimension, has_model=embedder is not None)
        self.storage: CacheStorage[Any] = LocalStorage(settings, self.dimension, self.embedding_model, clock)
        self.recovery_seconds = self.storage.recovery_seconds
        self.thresholds = Thresholds(settings, self.storage.namespace_thresholds)

    # -- lookup -------------------------------------------------------------------

    def lookup(
        self,
        key: PartitionKey,
        query: str,
        embedding: Sequence[float] | np.ndarray | None = None,
        min_similarity: float | None = None,
        deadline: float | None = None,
        *,
        verifier_band_low: float | None = None,
        verifier_min_score: float | None = None,
    ) -> LookupResult:
        """The stored response for this query, or a miss. Never crosses partitions.
        deadline: time.monotonic() past which the caller has given up (see _embed).
        verifier_band_low, verifier_min_score: this request's gray band (see decision.py)."""
        started = time.perf_counter()
        policy = self.thresholds.policy(key.namespace, min_similarity, verifier_band_low, verifier_min_score)
        result = self._lookup(key, query, embedding, policy, deadline)
        outcome = "miss" if not result.hit else "exact_hit" if result.exact else "semantic_hit"
        self.metrics.observe_lookup(key.namespace, outcome, time.perf_counter() - started)
        return result

    def _lookup(
        self,
        key: PartitionKey,
        query: str,
        embedding: Sequence[float] | np.ndarray | None,
        policy: DecisionPolicy,
        deadline: float | None,
    ) -> LookupResult:
        vector = self.validator.client_vector(embedding)
        normalized = self.validator.query(query, vector is not None)
        threshold = policy.threshold
        partition = self.storage.partition(key)
        if partition is None:
            self.storage.count_lookup(None, MISS)
            return LookupResult(hit=False, threshold=threshold, resolved_version=key.version, decided_by="no_partition")
        now = self.clock()
        exact = self.storage.exact_candidate(partition, normalized, now) if normalized else None
        if exact is not None:
            return self._hit(partition, exact, threshold, now, Verdict(exact, 1.0, "", EXACT))
        if vector is None:
            if self.embedder is None:  # no model and no client vector: the exact tier was all there is
                return self._miss(partition, threshold, now, Verdict(None, None, "", NO_CANDIDATE))
            vector = self._embed([query], deadline)[0]
        guard_text = query if normalized and self.settings.semantic_guard_for(key.namespace) else ""
        verify = self._verifier_for(query) if query and self.verifier is not None else None
        with self.storage.candidates(partition, vector, now) as candidates:
            verdict = decide(candidates, policy, guard_text, verify)
        self._observe_searches(candidates)
        if verdict.hit is None:
            return self._miss(partition, threshold, now, verdict)
        return self._hit(partition, verdict.hit, threshold, now, verdict)

    def _verifier_for(self, query: str) -> Callable[[Sequence[str]], np.ndarray]:
        """The verifier bound to this query, timed into the metrics."""
        verifier = self.verifier
        assert verifier is not None

        def verify(stored_queries: Sequence[str]) -> np.ndarray:
            with self.metrics.verifier_seconds.time():
                return verifier.score(query, stored_queries)

        return verify

    def _hit(
        self, partition: PartitionHandle, candidate: Candidate, threshold: float, now: float, verdict: Verdict
    ) -> LookupResult:
        exact = verdict.decided_by == EXACT
        self.storage.count_lookup(
            partition, EXACT_HIT if exact else SEMANTIC_HIT, candidate=candidate, now=now,
            sliding_ttl=self.settings.sliding_ttl_for(partition.key.namespace),
        )
        record = candidate.record
        return LookupResult(
            hit=True,
            threshold=threshold,
            resolved_version=partition.key.version,
            entry_id=format_entry_id(candidate.entry_id),
            response=record.response,
            similarity=candidate.similarity,
            matched_query=record.query,
            exact=exact,
            metadata=record.metadata,  # the record is this lookup's own copy: no need for another
            decided_by=verdict.decided_by,
            verifier_score=verdict.verifier_score,
        )

    def _miss(self, partition: PartitionHandle, threshold: float, now: float, verdict: Verdict) -> LookupResult:
        self.storage.count_lookup(partition, MISS, now=now)
        return LookupResult(
            hit=False, threshold=threshold, resolved_version=partition.key.version, similarity=verdict.best_similarity,
            guard_reason=verdict.guard_reason, decided_by=verdict.decided_by, verifier_score=verdict.verifier_score,
        )

    def _observe_searches(self, candidates: CandidateStream) -> None:
        for seconds in candidates.search_seconds:
            self.metrics.search_seconds.observe(seconds)

    # -- store --------------------------------------------------------------------

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
        job = self._job(StoreItem(key, query, response, embedding, ttl_seconds, metadata, cost))
        if job.vector.size == 0:
            self._set_vectors([job], self._embed([query], deadline))
        result = self.storage.commit(job)
        self.metrics.count_stores(key.namespace)
        return result

    def store_batch(self, items: Sequence[StoreItem], deadline: float | None = None) -> list[StoreResult | SemcacheError]:
        """Store many entries: one model call for those without a vector, one commit for all.
        Each item gets its own result or its own error; a deadline that passes before the
        model runs stores nothing (DeadlineExceededError)."""
        jobs: list[StoreJob | SemcacheError] = []
        for item in items:
            try:
                jobs.append(self._job(item))
            except SemcacheError as e:
                jobs.append(e)
        valid = [j for j in jobs if isinstance(j, StoreJob)]
        # _job already refused text-only items on a server without a model.
        to_embed = [j for j in valid if j.vector.size == 0]
        if to_embed:
            self._set_vectors(to_embed, self._embed([j.record.query for j in to_embed], deadline))
        committed = iter(self.storage.commit_all(valid))
        results = [job if isinstance(job, SemcacheError) else next(committed) for job in jobs]
        for item, result in zip(items, results, strict=True):
            if isinstance(result, StoreResult):
                self.metrics.count_stores(item.key.namespace)
        return results

    def _job(self, item: StoreItem) -> StoreJob:
        """A validated Store; its vector is empty when the model must compute it."""
        metadata = dict(item.metadata or {})
        vector = self.validator.client_vector(item.embedding)
        normalized = self.validator.query(item.query, vector is not None)
        self.validator.store_fields(item.response, metadata, item.cost, item.ttl_seconds, vector is not None)
        record = EntryRecord(
            query=item.query,
            normalized_query=normalized,
            response=bytes(item.response),
            embedding=b"" if vector is None else vector.astype(np.float32).tobytes(),
            metadata=metadata,
            cost=item.cost,
            ttl_seconds=ttl.ttl_seconds_for(item.ttl_seconds, self.settings.default_ttl_seconds_for(item.key.namespace)),
        )
        # The vector's bytes count whether or not the client sent it.
        size = entry_bytes(record) + (4 * self.dimension if vector is None else 0)
        budget_bytes = self.storage.budget_refuses(item.key.namespace, size)
        if budget_bytes:
            raise ResourceExhaustedError(f"entry is {size} bytes; the byte budget of its scope is {budget_bytes}")
        empty = np.empty(0, dtype=np.float32)
        return StoreJob(item.key, record, empty if vector is None else vector, size)

    @staticmethod
    def _set_vectors(jobs: Sequence[StoreJob], vectors: np.ndarray) -> None:
        for job, vector in zip(jobs, vectors, strict=True):
            job.vector = vector
            job.record.embedding = vector.tobytes()

    def _embed(self, texts: Sequence[str], deadline: float | None) -> np.ndarray:
        """The texts' vectors; DeadlineExceededError, without running the model, once
        `deadline` (time.monotonic()) has passed."""
        if self.embedder is None:
            raise FailedPreconditionError(NO_MODEL)
        try:
            with self.metrics.embed_seconds.time():
                return self.embedder.embed(texts, deadline)
        except DeadlineExceededError:
            self.metrics.shed_deadline.inc()
            raise

    # -- removal, thresholds ----------------------------------------------------------

    def delete(self, key: PartitionKey, entry_id_text: str) -> bool:
        """Remove one entry of this partition; False when there is no such entry in it."""
        return self.storage.delete(key, parse_entry_id(entry_id_text))

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
        return self.storage.invalidate(
            key, all_versions=all_versions, whole_namespace=whole_namespace, metadata_match=metadata_match
        )

    def namespace_threshold(self, namespace: str) -> float:
        return self.thresholds.for_namespace(namespace)

    def set_namespace_threshold(self, namespace: str, min_similarity: float | None) -> float:
        """Set (None: clear) a namespace's threshold, persisted; returns the one now in force."""
        return self.thresholds.set_namespace(namespace, min_similarity, self.storage.save_namespace_thresholds)

    # -- reporting and upkeep ---------------------------------------------------------

    def stats(
        self,
        namespace: str | None = None,
        model: str = "",
        version: str = "",
        *,
        allowed: Callable[[str], bool] | None = None,
        listed: int | None = None,
    ) -> StatsView:
        """Counters for the server (namespace None) or for partitions matching the filter;
        see semcache.stats.stats_view."""
        return self.storage.stats(namespace, model, version, allowed=allowed, listed=listed)

    @property
    def store_commits(self) -> int:
        """LMDB transactions that committed Stores (stores / commits = group-commit size)."""
        return self.storage.store_commits

    def check_consistency(self) -> list[str]:
        """Disagreements between LMDB and the in-memory indexes and policy; [] when they agree."""
        return self.storage.check_consistency()

    def flush_stats(self) -> None:
        """Write pending hit counts, LFU scores, sliding expiries and counters to LMDB."""
        self.storage.flush_stats()

    def sweep_expired(self) -> int:
        """Remove every entry whose TTL has run out. Returns how many."""
        return self.storage.sweep_expired()

    def wait_for_purges(self) -> None:
        """Block until retired partitions are fully removed from LMDB."""
        self.storage.wait_for_purges()

    def start_maintenance(self) -> None:
        """Start the background thread that flushes hit counts and sweeps expired entries."""
        self.storage.start_maintenance()

    def close(self) -> None:
        self.storage.close()
