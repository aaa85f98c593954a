"""The cache engine's facade: each Lookup and Store, in order, and nothing else.

    lookup: validate -> partition + policy -> exact tier -> embed -> semantic
            candidates -> decide (guard, threshold, verifier) -> count
    store:  validate -> embed -> commit (grouped, LMDB first) -> count

Storage (LMDB + FAISS) sits behind `semcache_server.storage.CacheStorage`; the hit decision
is `semcache_server.decision.decide`; this module alone records metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from semcache_server.cache_control import DEFAULT_CONTROL, REFRESH, CacheControl
from semcache_server.calibration import Calibrated, Calibration
from semcache_server.decision import EXACT, NO_CANDIDATE, Candidate, DecisionPolicy, Verdict, decide
from semcache_server.embedder import Embedder
from semcache_server.entries import (
    COUNTERS,
    FeedbackResult,
    LookupResult,
    StatsView,
    StoreItem,
    StoreResult,
    format_entry_id,
)
from semcache_server.errors import ConfigError, DeadlineExceededError, FailedPreconditionError, SemcacheError
from semcache_server.key_fingerprint import NO_KEY, KeyParts
from semcache_server.leases import LeaseTable
from semcache_server.ledger import EXACT_HIT, MISS, SEMANTIC_HIT
from semcache_server.metrics import Metrics
from semcache_server.partition import PartitionKey
from semcache_server.prepared import LookupRequest, StoreJobPlan, embed_plans, plan_store, prepare_lookup
from semcache_server.settings import Settings
from semcache_server.storage import CacheStorage, CandidateStream, PartitionHandle, open_storage
from semcache_server.thresholds import Thresholds
from semcache_server.validation import NO_MODEL, RequestValidator, parse_entry_id
from semcache_server.verdicts import Verdicts
from semcache_server.verifier.model import Verifier


def _vector_question(vector: np.ndarray | None) -> str:
    return "" if vector is None else "\x00vector:" + hashlib.sha256(vector.tobytes()).hexdigest()[:32]


# A waiter stops this long before its call's deadline, to answer in time.
_ANSWER_MARGIN_SECONDS = 0.05


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
        self.validator = RequestValidator(settings, self.dimension, has_model=(has_model := embedder is not None))
        self._prepare = functools.partial(prepare_lookup, validator=self.validator, settings=settings, has_model=has_model)
        self.storage: CacheStorage[Any] = open_storage(settings, self.dimension, self.embedding_model, clock)
        self.recovery_seconds = self.storage.recovery_seconds
        calibration = Calibration(settings, self.storage.calibrations, self.storage.save_calibration)
        self.thresholds = Thresholds(settings, self.storage.namespace_thresholds, calibration)
        self.storage.watch_namespace_thresholds(self.thresholds.replace_runtime)
        self.leases = LeaseTable(settings.lease_seconds, settings.lease_waiters)
        embed, count_judged = (self._embed if embedder is not None else None), self.metrics.count_judged
        self.verdicts = Verdicts(settings, self.storage, self.store, calibration, embed, clock, count_judged, self.verifier)

    # -- lookup -------------------------------------------------------------------

    def lookup(
        self,
        key: PartitionKey,
        query: str,
        embedding: Sequence[float] | np.ndarray | None = None,
        min_similarity: float | None = None,
        deadline: float | None = None,
        *,
        verifier_band_low: float | None = None, verifier_min_score: float | None = None, verifier_veto_score: float | None = None,
        request_key: KeyParts = NO_KEY,
        control: CacheControl = DEFAULT_CONTROL,
        lease: bool = False,
        lease_wait_seconds: float | None = None,
        audit_rate: float = 0.0,
        near_miss_band: float = 0.0,
    ) -> LookupResult:
        """The stored response for this query, or a miss. Never crosses partitions, and
        never answers with an entry whose request key (settings, tools, context) differs.
        deadline: time.monotonic() past which the caller has given up (see _embed).
        verifier_band_low, verifier_min_score, verifier_veto_score: this request's band and veto (decision.py).
        lease: the caller computes and stores on a miss, so concurrent misses of the same
        question wait for its Store (see semcache_server/leases.py), at most lease_wait_seconds.
        audit_rate: the share of eligible Lookups drawn for an audit (semcache_server/calibration.py).
        near_miss_band: a miss names its best candidate within this much under the threshold."""
        started = time.perf_counter()
        policy = self.thresholds.policy(key.namespace, min_similarity, verifier_band_low, verifier_min_score, verifier_veto_score)
        request = self._prepare(key, query, embedding, request_key, control)
        leased = lease and not control.no_store and not control.refresh
        result = self._lookup(key, request, policy, deadline, count_miss=not leased)
        if leased and not result.hit:
            result = self._single_flight(key, request, policy, deadline, result, lease_wait_seconds)
        audited = audit_rate if min_similarity is None and not control.refresh else 0.0
        result = self.verdicts.logged(key, request, request_key, result, audited, self.thresholds.for_namespace, near_miss_band)
        outcome = "miss" if not result.hit else "exact_hit" if result.exact else "semantic_hit"
        self.metrics.observe_lookup(key.namespace, outcome, time.perf_counter() - started)
        return result

    def _lookup(
        self, key: PartitionKey, request: LookupRequest, policy: DecisionPolicy, deadline: float | None, *, count_miss: bool,
    ) -> LookupResult:
        threshold = policy.threshold
        partition = self.storage.partition(key)
        if partition is None or request.control.refresh:
            if count_miss:
                self.storage.count_lookup(partition, MISS)
            decided_by = REFRESH if request.control.refresh else "no_partition"
            return LookupResult(hit=False, threshold=threshold, resolved_version=key.version, decided_by=decided_by)
        now = self.clock()
        context_min_similarity = self.settings.for_namespace(key.namespace, "context_min_similarity")
        match = request.match(now, context_min_similarity)
        normalized = request.normalized
        exact = self.storage.exact_candidate(partition, normalized, now, match) if normalized else None
        if exact is not None:
            return self._hit(partition, exact, threshold, now, Verdict(exact, 1.0, "", EXACT))
        if request.vector is None and self.embedder is None:  # no model, no client vector: the exact tier was all
            return self._miss(partition, threshold, now, Verdict(None, None, "", NO_CANDIDATE), count=count_miss)
        self._embed_request(request, deadline)
        assert request.vector is not None
        if request.key.semantic_context:  # the previous turn's vector is known now
            match = request.match(now, context_min_similarity)
        guard_text = request.query if normalized and self.settings.for_namespace(key.namespace, "semantic_guard") else ""
        verify = self._verifier_for(request.query) if request.query and self.verifier is not None else None
        with self.storage.candidates(partition, request.vector, now, match) as candidates:
            verdict = decide(candidates, policy, guard_text, verify)
        self._observe_searches(candidates)
        if verdict.hit is None:
            return self._miss(partition, threshold, now, verdict, count=count_miss)
        return self._hit(partition, verdict.hit, threshold, now, verdict)

    def _embed_request(self, request: LookupRequest, deadline: float | None) -> None:
        """The query's vector (unless the client sent one) and, with semantic context, the
        previous turn's, in one model call; once per request."""
        texts = [] if request.vector is not None else [request.query]
        if request.key.semantic_context and request.context_vector is None:
            texts.append(request.key.previous_turn)
        if not texts:
            return
        vectors = self._embed(texts, deadline)
        if request.vector is None:
            request.vector = vectors[0]
        if request.key.semantic_context:
            request.context_vector = vectors[-1]

    def _single_flight(
        self, key: PartitionKey, request: LookupRequest, policy: DecisionPolicy, deadline: float | None,
        result: LookupResult, lease_wait_seconds: float | None,
    ) -> LookupResult:
        """A leased miss: take the question's lease, or wait for its holder's Store and
        look up again. Counts one lookup in all."""
        mode = self.settings.for_namespace(key.namespace, "coalesce")
        wait_seconds = self.settings.for_namespace(key.namespace, "lease_wait_seconds")
        if lease_wait_seconds is not None:
            wait_seconds = lease_wait_seconds
        started = time.monotonic()
        until = started + (wait_seconds if mode != "off" else 0.0)
        if deadline is not None:
            until = min(until, deadline - _ANSWER_MARGIN_SECONDS)
        # A question is its normalized text; a vector-only Lookup's is its vector.
        question = (key, request.key.exact_suffix, request.normalized or _vector_question(request.vector))
        semantic_threshold = policy.threshold if mode == "semantic" else None
        if semantic_threshold is not None and request.vector is None and self.embedder is not None:
            self._embed_request(request, deadline)  # a miss without a partition yet was not embedded
        while True:
            claim = self.leases.claim(question, request.vector, semantic_threshold)
            if claim.mine:
                result = dataclasses.replace(result, lease_id=claim.lease.id)
                break
            if not self.leases.wait(claim.lease, until):
                break  # waited long enough (or too many wait): a plain miss, computed by the caller
            result = self._lookup(key, request, policy, deadline, count_miss=False)
            if result.hit:
                self.leases.note_coalesced()
                waited_ms = int((time.monotonic() - started) * 1000)
                return dataclasses.replace(result, coalesced=True, waited_ms=waited_ms)
        self.storage.count_lookup(self.storage.partition(key), MISS, now=self.clock())
        return result

    def _verifier_for(self, query: str) -> Callable[[Sequence[str], Sequence[float]], np.ndarray]:
        """The verifier bound to this query, timed into the metrics."""
        verifier = self.verifier
        assert verifier is not None

        def verify(stored_queries: Sequence[str], similarities: Sequence[float]) -> np.ndarray:
            with self.metrics.verifier_seconds.time():
                return verifier.judge(query, stored_queries, similarities)

        return verify

    def _hit(
        self, partition: PartitionHandle, candidate: Candidate, threshold: float, now: float, verdict: Verdict
    ) -> LookupResult:
        exact = verdict.decided_by == EXACT
        self.storage.count_lookup(
            partition, EXACT_HIT if exact else SEMANTIC_HIT, candidate=candidate, now=now,
            sliding_ttl=self.settings.for_namespace(partition.key.namespace, "sliding_ttl"),
        )
        record = candidate.record
        return LookupResult(
            hit=True, threshold=threshold, resolved_version=partition.key.version,
            entry_id=format_entry_id(candidate.entry_id), response=record.response, similarity=candidate.similarity,
            matched_query=record.query, exact=exact,
            metadata=record.metadata,  # the record is this lookup's own copy: no need for another
            decided_by=verdict.decided_by, verifier_score=verdict.verifier_score,
        )

    def _miss(
        self, partition: PartitionHandle, threshold: float, now: float, verdict: Verdict, *, count: bool = True,
    ) -> LookupResult:
        if count:
            self.storage.count_lookup(partition, MISS, now=now)
        return LookupResult(
            hit=False, threshold=threshold, resolved_version=partition.key.version, similarity=verdict.best_similarity,
            guard_reason=verdict.guard_reason, decided_by=verdict.decided_by, verifier_score=verdict.verifier_score,
            nearest=verdict.nearest,
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
        request_key: KeyParts = NO_KEY,
        lease_id: str = "",
    ) -> StoreResult:
        """Store a response; returns once it is committed to LMDB.

        Evicts least-frequently-used entries first when a budget would be exceeded,
        and when LMDB is at max_map_bytes. A deadline (time.monotonic()) that passes
        while the query waits for the model stores nothing (DeadlineExceededError).
        The entry answers only Lookups whose request key agrees; its commit ends the
        question's lease (and lease_id's), answering the Lookups waiting on it.
        """
        job = self._job(StoreItem(key, query, response, embedding, ttl_seconds, metadata, cost, request_key, lease_id))
        self._embed_jobs([job], deadline)
        result = self.storage.commit(job.job)
        self._stored(job)
        return result

    def store_batch(self, items: Sequence[StoreItem], deadline: float | None = None) -> list[StoreResult | SemcacheError]:
        """Store many entries: one model call for those without a vector, one commit for all.
        Each item gets its own result or its own error; a deadline that passes before the
        model runs stores nothing (DeadlineExceededError)."""
        jobs: list[StoreJobPlan | SemcacheError] = []
        for item in items:
            try:
                jobs.append(self._job(item))
            except SemcacheError as e:
                jobs.append(e)
        valid = [j for j in jobs if isinstance(j, StoreJobPlan)]
        self._embed_jobs(valid, deadline)
        committed = iter(self.storage.commit_all([j.job for j in valid]))
        results: list[StoreResult | SemcacheError] = []
        for job in jobs:
            if isinstance(job, SemcacheError):
                results.append(job)
                continue
            result = next(committed)
            results.append(result)
            if isinstance(result, StoreResult):
                self._stored(job)
        return results

    def _stored(self, job: StoreJobPlan) -> None:
        self.leases.complete(job.question, job.lease_id)
        self.metrics.count_stores(job.job.key.namespace)

    def _job(self, item: StoreItem) -> StoreJobPlan:
        return plan_store(
            item, self.validator, self.settings, self.storage.budget_refuses, self.dimension, has_model=self.embedder is not None
        )

    def _embed_jobs(self, jobs: Sequence[StoreJobPlan], deadline: float | None) -> None:
        embed_plans(jobs, lambda texts: self._embed(texts, deadline))

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

    def feedback(
        self, key: PartitionKey, lookup_id: str, correct: bool, should_match_entry_id: str = "", fresh_response: bytes = b"",
        *, missed: tuple[str, Any, KeyParts] | None = None,
    ) -> FeedbackResult:
        """A verdict on a Lookup of its namespace (semcache_server/verdicts.py); missed: a miss sent again."""
        resent = None if missed is None else (self._prepare(key, *missed, DEFAULT_CONTROL), missed[2])
        return self.verdicts.take(key, lookup_id, correct, should_match_entry_id, fresh_response, resent=resent)

    def release_lease(self, key: PartitionKey, lease_id: str) -> bool:
        """End a lease without a Store (its holder's LLM call failed); waiters wake."""
        return self.leases.release(lease_id, key.namespace)

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

    def calibrations(self, allowed: Callable[[str], bool] | None = None) -> list[Calibrated]:
        """What audits say of each namespace's threshold (see semcache_server/calibration.py)."""
        return self.thresholds.calibration.report(self.thresholds.for_namespace, allowed)

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
        see semcache_server.stats.stats_view."""
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
        self.verdicts.close()
        self.storage.close()
