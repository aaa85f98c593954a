"""Feedback, end to end: each Lookup logged under its lookup_id, and a verdict on one
taken (rate-limited, once per lookup_id) and applied to the storage. The policy of what
a verdict does is in semcache_server/feedback.py."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from semcache_server.entries import FeedbackResult, LookupResult
from semcache_server.errors import FailedPreconditionError, NotFoundError, ResourceExhaustedError
from semcache_server.feedback import LoggedLookup, LookupLog, RateLimit, key_bytes, veto
from semcache_server.partition import PartitionKey
from semcache_server.prepared import LookupRequest
from semcache_server.settings import Settings
from semcache_server.validation import parse_entry_id

# The largest request key a miss keeps in the lookup log for an alias.
MAX_LOGGED_KEY_BYTES = 4096


class Verdicts:
    def __init__(self, settings: Settings, storage: Any, store: Callable[..., Any], *, has_model: bool) -> None:
        self._settings = settings
        self._storage = storage
        self._store = store  # SemanticCache.store, for aliases
        self._has_model = has_model
        self.log_of_lookups = LookupLog(settings.feedback_log_entries, settings.feedback_log_seconds)
        self._limit = RateLimit(settings.feedback_per_second)

    def log(self, key: PartitionKey, request: LookupRequest, parts: Any, result: LookupResult) -> str:
        miss = not result.hit
        # What an alias of a miss needs: the vector where no model can recompute it, and the key.
        kept_vector = request.vector if miss and not self._has_model else None
        keep_key = miss and key_bytes(parts) <= MAX_LOGGED_KEY_BYTES
        return self.log_of_lookups.add(LoggedLookup(
            key, request.query, request.question, 0 if miss else int(result.entry_id), result.similarity or 0.0,
            b"" if kept_vector is None else kept_vector.tobytes(),
            parts if keep_key else None, time.monotonic(),
        ))

    def take(self, key: PartitionKey, lookup_id: str, correct: bool, should_match_entry_id: str) -> FeedbackResult:
        if not self._limit.allow(key.namespace):
            raise ResourceExhaustedError(
                f"more than {self._settings.feedback_per_second:g} verdicts per second in namespace {key.namespace!r}"
            )
        logged, first = self.log_of_lookups.judge(lookup_id)
        if logged is None or logged.key.namespace != key.namespace:
            raise NotFoundError(
                f"no Lookup {lookup_id[:40]!r} in namespace {key.namespace!r} (unknown, over feedback_log_seconds old, "
                "or older than the newest feedback_log_entries Lookups)"
            )
        if not first:
            return FeedbackResult(counted=False)
        if logged.entry_id:  # a hit
            change = None if correct else functools.partial(veto, digest=logged.digest, similarity=logged.similarity)
            vetoed = self._storage.record_verdict(logged.key, logged.entry_id, correct, change)
            return FeedbackResult(counted=True, vetoed=vetoed and not correct)
        if not should_match_entry_id:
            return FeedbackResult(counted=True)
        return FeedbackResult(counted=True, alias_entry_id=self._alias(logged, parse_entry_id(should_match_entry_id)))

    def _alias(self, logged: LoggedLookup, entry_id: int) -> str:
        """Store a missed query as an alias of an entry of its partition: the entry's response."""
        entry = self._storage.entry(logged.key, entry_id)
        if entry is None:
            raise NotFoundError(f"no entry {entry_id} in partition {logged.key}")
        if logged.request_key is None:
            raise FailedPreconditionError("the Lookup's request key was too large to keep for an alias")
        if not logged.vector and (not self._has_model or not logged.query):
            raise FailedPreconditionError("an alias of a vector-only Lookup needs the server's model or the Lookup's vector")
        vector = np.frombuffer(logged.vector, dtype=np.float32) if logged.vector else None
        stored = self._store(
            logged.key, logged.query, entry.response, embedding=vector, metadata=dict(entry.metadata), cost=entry.cost,
            ttl_seconds=entry.ttl_seconds, request_key=logged.request_key,
        )
        return str(stored.entry_id)
