"""Feedback, end to end: each Lookup logged under its lookup_id, and a verdict on one
taken (rate-limited, once per lookup_id) and applied to the storage. The policy of what
a verdict does is in semcache_server/feedback.py; what audits do to the threshold, in
semcache_server/calibration.py."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from semcache_server.calibration import SAME_ANSWER_SIMILARITY, Calibration
from semcache_server.decision import UNDER_THRESHOLD_HITS, VERIFIER
from semcache_server.entries import FeedbackResult, LookupResult, format_entry_id
from semcache_server.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    StorageFullError,
)
from semcache_server.feedback import LoggedLookup, LookupLog, RateLimit, key_bytes, veto
from semcache_server.lookup_ids import LookupIds
from semcache_server.near_miss_judge import NearMiss, WebhookJudge
from semcache_server.partition import PartitionKey
from semcache_server.prepared import LookupRequest
from semcache_server.settings import Settings
from semcache_server.validation import parse_entry_id
from semcache_server.verifier.model import Verifier

log = logging.getLogger("semcache")

# Bytes of each answer an audit compares (the model reads its first 256 tokens anyway).
SAME_ANSWER_CHARS = 4096

# The largest request key a miss keeps in the lookup log for an alias.
MAX_LOGGED_KEY_BYTES = 4096


class Verdicts:
    def __init__(
        self, settings: Settings, storage: Any, store: Callable[..., Any], calibration: Calibration,
        embed: Callable[[Sequence[str], float | None], np.ndarray] | None, clock: Callable[[], float] = time.time,
        count_judged: Callable[[str], None] = lambda result: None,
        verifier: Verifier | None = None,
    ) -> None:
        """count_judged: counts each outcome of the webhook judge of near misses, by name.
        verifier: its judgement of each audited pair is kept, to check the verdicts
        against (semcache_server/calibration.py)."""
        self._verifier = verifier
        self._settings = settings
        self._storage = storage
        self._store = store  # SemanticCache.store, for aliases
        self._calibration = calibration
        self._embed = embed  # the server's model (None: clients supply vectors)
        self._has_model = embed is not None
        self._clock = clock
        self.log_of_lookups = LookupLog(settings.feedback_log_entries, settings.feedback_log_seconds, clock)
        self._ids = LookupIds(storage.lookup_id_key, settings.feedback_log_seconds, clock)
        self._limit = RateLimit(settings.feedback_per_second)
        self._judge: WebhookJudge | None = None
        if settings.near_miss_judge_url:
            self._judge = WebhookJudge(
                settings.near_miss_judge_url, token=settings.near_miss_judge_token,
                timeout_seconds=settings.near_miss_judge_timeout_seconds, queue_size=settings.near_miss_judge_queue,
                per_second=settings.near_miss_judge_per_second, alias=self.judged_alias, count=count_judged,
            )

    def logged(
        self, key: PartitionKey, request: LookupRequest, parts: Any, result: LookupResult, audit_rate: float,
        configured_threshold: Callable[[str], float], near_miss_band: float = 0.0,
    ) -> LookupResult:
        """The result with its lookup_id, under which Feedback finds what was served, and,
        where a Lookup asked for audits and was drawn, marked for one. configured_threshold:
        a namespace's configured threshold (read only for a Lookup that asked for audits).
        near_miss_band: a miss names its best candidate when it came within this much under
        the threshold, for the app's judge."""
        miss = not result.hit
        nearest = result.nearest if miss else None
        near = nearest if near_miss_band > 0 and nearest is not None else None
        if near is not None and near.similarity >= result.threshold - near_miss_band:
            result = dataclasses.replace(
                result, near_miss_entry_id=format_entry_id(near.entry_id), near_miss_query=near.record.query,
                near_miss_response=near.record.response,
            )
        audit_counts = None
        if audit_rate > 0 and not result.exact:
            counts = self._calibration.counts(key.namespace)
            configured = configured_threshold(key.namespace)
            if self._calibration.sample(key.namespace, audit_rate, result.similarity, configured, hit=result.hit):
                audit_counts = counts
        # What an alias of a miss needs: the vector where no model can recompute it, and the key.
        kept_vector = request.vector if miss and not self._has_model else None
        keep_key = miss and key_bytes(parts) <= MAX_LOGGED_KEY_BYTES
        logged = LoggedLookup(
            key, request.query, request.question, 0 if miss else int(result.entry_id), result.similarity or 0.0,
            b"" if kept_vector is None else kept_vector.tobytes(),
            parts if keep_key else None, self._clock(), audit_counts=audit_counts,
            audit_entry_id=_judged_entry_id(result, audit_counts is not None),
            # a hit the verifier or agreement served under the threshold: served at every threshold
            audit_verified=audit_counts is not None and result.decided_by in UNDER_THRESHOLD_HITS,
            audit_score=result.verifier_score if audit_counts is not None and result.decided_by == VERIFIER else None,
        )
        lookup_id = self._ids.issue(logged)
        self.log_of_lookups.add(lookup_id, logged)
        if self._judge is not None and nearest is not None and logged.digest:
            self._offer_to_judge(logged, nearest, result.threshold)
        if audit_counts is None:
            return dataclasses.replace(result, lookup_id=lookup_id, nearest=None)
        return dataclasses.replace(
            result, lookup_id=lookup_id, nearest=None, audit=True,
            audit_entry_id=format_entry_id(nearest.entry_id) if nearest is not None else "",
            audit_response=nearest.record.response if nearest is not None else b"",
        )

    def _offer_to_judge(self, logged: LoggedLookup, nearest: Any, threshold: float) -> None:
        """A miss just under the threshold goes to the webhook judge, when an alias of it could be stored."""
        assert self._judge is not None
        if not threshold - self._settings.near_miss_judge_band <= nearest.similarity < threshold:
            return
        if logged.request_key is None or not (logged.vector or self._has_model):
            return
        self._judge.offer(NearMiss(
            logged, nearest.entry_id, nearest.record.query, nearest.record.response, nearest.similarity, threshold,
        ))

    def judged_alias(self, logged: LoggedLookup, entry_id: int) -> str:
        """The webhook judge confirmed a near miss: store its query as an alias of the entry."""
        return self._alias(logged, self._alias_target(logged, entry_id))

    def close(self) -> None:
        if self._judge is not None:
            self._judge.close()
        try:
            self._calibration.flush()
        except StorageFullError as e:
            log.warning("the newest audits were not written: %s", e)

    def take(
        self, key: PartitionKey, lookup_id: str, correct: bool, should_match_entry_id: str, fresh_response: bytes = b"",
        resent: tuple[LookupRequest, object] | None = None,
    ) -> FeedbackResult:
        """resent: a missed Lookup (validated) and its request key, sent again for an alias
        where the log no longer holds it."""
        if not self._limit.allow(key.namespace):
            raise ResourceExhaustedError(
                f"more than {self._settings.feedback_per_second:g} verdicts per second in namespace {key.namespace!r}"
            )
        logged, claim = self._resolve(key, lookup_id)
        if fresh_response:
            correct = self._same_answer(logged, fresh_response)
        if not logged.from_id and not self.log_of_lookups.judge(lookup_id)[1]:
            return FeedbackResult(counted=False)
        alias_of = None  # (an entry) checked before the verdict is claimed: a refused alias costs it nothing
        if should_match_entry_id and not logged.entry_id:
            if logged.from_id:
                logged = self._resent_miss(logged, lookup_id, resent)
            alias_of = self._alias_target(logged, parse_entry_id(should_match_entry_id))
        if claim is not None and not self._storage.claim_verdict(logged.key, *claim):  # counted before a restart
            return FeedbackResult(counted=False)
        if logged.audit_counts is not None:  # for a near miss: would its best candidate have been right?
            self._calibration.add(
                key.namespace, logged.similarity, not correct, *logged.audit_counts, verified=logged.audit_verified,
                verifier_score=self._audit_score(logged),
            )
            if not logged.entry_id and not should_match_entry_id:
                return FeedbackResult(counted=True)
        if logged.entry_id:  # a hit
            change = None if correct else functools.partial(veto, digest=logged.digest, similarity=logged.similarity)
            vetoed = self._storage.record_verdict(logged.key, logged.entry_id, correct, change)
            return FeedbackResult(counted=True, vetoed=vetoed and not correct)
        if alias_of is None:
            return FeedbackResult(counted=True)
        return FeedbackResult(counted=True, alias_entry_id=self._alias(logged, alias_of))

    def _resolve(self, key: PartitionKey, lookup_id: str) -> tuple[LoggedLookup, tuple[bytes, float] | None]:
        """The Lookup an id names, from the log or else from the signed id itself, and what
        its verdict claims in the storage (its MAC, until when); NotFoundError when neither
        knows it in this namespace."""
        in_log = self.log_of_lookups.peek(lookup_id)
        if in_log is not None and in_log.key.namespace != key.namespace:
            in_log = None
        signed = self._ids.read(lookup_id, in_log.key if in_log is not None else key)
        logged = self._found(key, lookup_id, in_log if in_log is not None else signed[0] if signed is not None else None)
        return logged, (signed[1], signed[2]) if signed is not None else None

    @staticmethod
    def _found(key: PartitionKey, lookup_id: str, logged: LoggedLookup | None) -> LoggedLookup:
        """The logged Lookup of this namespace, else NotFoundError."""
        if logged is None or logged.key.namespace != key.namespace:
            raise NotFoundError(
                f"no Lookup {lookup_id[:40]!r} in partition {key} (unknown, of another partition, or over "
                "feedback_log_seconds old)"
            )
        return logged

    def _audit_score(self, logged: LoggedLookup) -> float:
        """The verifier's judgement of an audited pair (-1: no verifier, or the query is not
        known: a Lookup read from its signed id, or a vector alone)."""
        if logged.audit_score is not None:
            return logged.audit_score
        if self._verifier is None or not logged.query:
            return -1.0
        entry = self._storage.entry(logged.key, logged.audit_entry_id)
        if entry is None or not entry.query:
            return -1.0
        return float(self._verifier.judge(logged.query, [entry.query], [logged.similarity])[0])

    def _resent_miss(
        self, logged: LoggedLookup, lookup_id: str, resent: tuple[LookupRequest, object] | None,
    ) -> LoggedLookup:
        """A miss read from its signed id, completed with the query, key and vector sent
        again, once they prove to be the question the id was issued for."""
        if resent is None:
            raise FailedPreconditionError(
                "an alias needs the missed Lookup's query and key, which the server keeps in memory only (the newest "
                "feedback_log_entries Lookups), and this one is gone from it (a restart, or another frontend's "
                "Lookup): send them again in the Feedback (query, key, and embedding where the server has no model)"
            )
        request, parts = resent
        if not logged.digest:
            raise FailedPreconditionError(
                "the missed Lookup had no query (a vector alone), so a query sent again cannot be checked against it"
            )
        if request.question != logged.digest:
            raise InvalidArgumentError(
                f"the query and key sent are not those Lookup {lookup_id[:40]!r} was issued for"
            )
        vector = b"" if self._has_model or request.vector is None else request.vector.astype(np.float32).tobytes()
        return dataclasses.replace(logged, query=request.query, vector=vector, request_key=parts)

    def _same_answer(self, logged: LoggedLookup, fresh_response: bytes) -> bool:
        """An audit's verdict from the fresh answer: is it the same as the one compared?"""
        if logged.audit_counts is None:
            raise FailedPreconditionError("fresh_response is for Lookups drawn for an audit; send correct instead")
        if self._embed is None:
            raise FailedPreconditionError("comparing answers needs the server's model; send correct instead")
        entry = self._storage.entry(logged.key, logged.audit_entry_id)
        if entry is None:
            raise NotFoundError(f"the audited entry {logged.audit_entry_id} is gone; send correct instead")
        texts = [answer[:SAME_ANSWER_CHARS].decode("utf-8", "replace") for answer in (entry.response, fresh_response)]
        vectors = self._embed(texts, None)
        return float(np.dot(vectors[0], vectors[1])) >= SAME_ANSWER_SIMILARITY

    def _alias_target(self, logged: LoggedLookup, entry_id: int) -> Any:
        """The entry a missed Lookup can become an alias of, else the error that says why not."""
        entry = self._storage.entry(logged.key, entry_id)
        if entry is None:
            raise NotFoundError(f"no entry {entry_id} in partition {logged.key}")
        if logged.request_key is None:
            raise FailedPreconditionError("the Lookup's request key was too large to keep for an alias")
        if not logged.vector and (not self._has_model or not logged.query):
            raise FailedPreconditionError(
                "an alias needs the missed Lookup's vector where the server has no model (send its embedding), "
                "or its query where it has one"
            )
        return entry

    def _alias(self, logged: LoggedLookup, entry: Any) -> str:
        """Store a missed query as an alias of an entry of its partition: the entry's response."""
        vector = np.frombuffer(logged.vector, dtype=np.float32) if logged.vector else None
        stored = self._store(
            logged.key, logged.query, entry.response, embedding=vector, metadata=dict(entry.metadata), cost=entry.cost,
            ttl_seconds=entry.ttl_seconds, request_key=logged.request_key,
        )
        return str(stored.entry_id)


def _judged_entry_id(result: LookupResult, audited: bool) -> int:
    """The entry an audit judges: the served one, or a miss's best candidate (0: none)."""
    if not audited:
        return 0
    if result.hit:
        return int(result.entry_id)
    return result.nearest.entry_id if result.nearest is not None else 0
