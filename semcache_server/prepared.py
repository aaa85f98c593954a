"""Validated requests, ready for the engine: a Lookup's query, vector, key and cache
control; a Store's record, its commit job and what is left to embed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from semcache_server import key_fingerprint, ttl
from semcache_server.cache_control import CacheControl
from semcache_server.entries import StoreItem, entry_bytes
from semcache_server.errors import FailedPreconditionError, ResourceExhaustedError
from semcache_server.feedback import question_digest
from semcache_server.group_commit import StoreJob
from semcache_server.key_fingerprint import CandidateFilter, KeyParts, ResolvedKey
from semcache_server.partition import PartitionKey
from semcache_server.settings import Settings
from semcache_server.v1.records_pb2 import EntryRecord
from semcache_server.validation import RequestValidator

SEMANTIC_CONTEXT_NEEDS_MODEL = "context_match = semantic needs the embedding model; this server has none"


@dataclasses.dataclass
class LookupRequest:
    """A validated Lookup."""

    query: str
    normalized: str
    vector: np.ndarray | None  # the client's, or the model's once computed
    key: ResolvedKey
    control: CacheControl
    question: bytes = b""  # its digest for verdicts (semcache_server/feedback.py), made once
    context_vector: np.ndarray | None = None  # semantic context: the previous turn's

    def match(self, now: float, context_min_similarity: float) -> CandidateFilter:
        return CandidateFilter(
            key_fingerprint=self.key.fingerprint,
            exact_suffix=self.key.exact_suffix,
            context_vector=self.context_vector,
            context_min_similarity=context_min_similarity,
            min_created_at=self.control.min_created_at(now),
            question=self.question,
        )


def prepare_lookup(
    key: PartitionKey, query: str, embedding: Any, parts: KeyParts, control: CacheControl,
    validator: RequestValidator, settings: Settings, *, has_model: bool,
) -> LookupRequest:
    vector = validator.client_vector(embedding)
    normalized = validator.query(query, vector is not None)
    validator.key(parts)
    resolved = key_fingerprint.resolve(parts, settings.key_policy_for(key.namespace))
    if resolved.semantic_context and not has_model:
        raise FailedPreconditionError(SEMANTIC_CONTEXT_NEEDS_MODEL)
    return LookupRequest(query, normalized, vector, resolved, control, question_digest(normalized, resolved.exact_suffix))


@dataclasses.dataclass
class StoreJobPlan:
    """A validated Store: its commit job, the previous turn to embed, the lease it ends."""

    job: StoreJob
    previous_turn: str
    lease_id: str

    @property
    def question(self) -> tuple[PartitionKey, str, str]:
        """Its question for the lease table (semcache_server/leases.py)."""
        record = self.job.record
        return self.job.key, key_fingerprint.record_exact_suffix(record), record.normalized_query


def plan_store(
    item: StoreItem, validator: RequestValidator, settings: Settings, budget_refuses: Callable[[str, int], int],
    dimension: int, *, has_model: bool,
) -> StoreJobPlan:
    """A validated Store; its vectors are empty while the model must compute them."""
    metadata = dict(item.metadata or {})
    vector = validator.client_vector(item.embedding)
    normalized = validator.query(item.query, vector is not None)
    validator.store_fields(item.response, metadata, item.cost, item.ttl_seconds, vector is not None)
    validator.key(item.request_key)
    resolved = key_fingerprint.resolve(item.request_key, settings.key_policy_for(item.key.namespace))
    if resolved.semantic_context and not has_model:
        raise FailedPreconditionError(SEMANTIC_CONTEXT_NEEDS_MODEL)
    record = EntryRecord(
        query=item.query,
        normalized_query=normalized,
        response=bytes(item.response),
        embedding=b"" if vector is None else vector.astype(np.float32).tobytes(),
        metadata=metadata,
        cost=item.cost,
        ttl_seconds=ttl.ttl_seconds_for(item.ttl_seconds, settings.for_namespace(item.key.namespace, "default_ttl_seconds")),
        key_fingerprint=resolved.fingerprint,
        context_digest=resolved.exact_suffix.partition("/")[2],
    )
    # The vectors' bytes count whether or not the client sent them.
    size = entry_bytes(record) + (4 * dimension if vector is None else 0)
    size += 4 * dimension if resolved.semantic_context else 0
    budget_bytes = budget_refuses(item.key.namespace, size)
    if budget_bytes:
        raise ResourceExhaustedError(f"entry is {size} bytes; the byte budget of its scope is {budget_bytes}")
    empty = np.empty(0, dtype=np.float32)
    job = StoreJob(item.key, record, empty if vector is None else vector, size)
    return StoreJobPlan(job, resolved.previous_turn, item.lease_id)


def embed_plans(plans: Sequence[StoreJobPlan], embed: Callable[[Sequence[str]], np.ndarray]) -> None:
    """One model call for the queries without a client vector and the previous turns of
    semantic-context Stores."""
    queries = [p for p in plans if p.job.vector.size == 0]
    turns = [p for p in plans if p.previous_turn]
    if not queries and not turns:
        return
    vectors = embed([p.job.record.query for p in queries] + [p.previous_turn for p in turns])
    for plan, vector in zip(queries, vectors[: len(queries)], strict=True):
        plan.job.vector = vector
        plan.job.record.embedding = vector.tobytes()
    for plan, vector in zip(turns, vectors[len(queries):], strict=True):
        plan.job.record.context_embedding = vector.tobytes()
