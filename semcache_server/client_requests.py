"""Request building shared by the sync and asyncio clients: Partition, RequestKey,
CacheControl and the Lookup/Store messages from plain Python values."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from semcache_server.v1 import semcache_pb2 as pb

# Codes that mean "the cache cannot answer now", not "the request is wrong": get_or_compute
# treats them as a miss, so a busy, slow or restarting cache never fails the application.
CACHE_UNAVAILABLE_CODES = frozenset({
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
})
# Metadata that marks a response stored from a str (returned as str on a hit).
ENCODING_KEY = "semcache.encoding"
PartitionLike = pb.Partition | Mapping[str, str] | None
TurnLike = pb.Turn | Mapping[str, str] | tuple[str, str]
KeyLike = pb.RequestKey | Mapping[str, Any] | None


def as_partition(partition: PartitionLike) -> pb.Partition:
    """A Partition from a message, a dict of its fields, or None (the default partition)."""
    if partition is None:
        return pb.Partition()
    if isinstance(partition, pb.Partition):
        return partition
    return pb.Partition(**partition)


def request_key(settings: Mapping[str, Any] | None = None, context: Sequence[TurnLike] | None = None) -> pb.RequestKey:
    """A RequestKey from generation settings and tools (any JSON values: temperature,
    tools, response_format, ...) and the earlier turns (dicts with role and content,
    (role, content) pairs, or Turn messages), oldest first."""
    key = pb.RequestKey()
    for name, value in (settings or {}).items():
        key.settings[name] = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    for turn in context or ():
        if isinstance(turn, pb.Turn):
            key.context.append(turn)
        elif isinstance(turn, tuple):
            key.context.append(pb.Turn(role=turn[0], content=turn[1]))
        else:
            key.context.append(pb.Turn(role=str(turn.get("role", "")), content=str(turn.get("content", ""))))
    return key


def as_key(key: KeyLike) -> pb.RequestKey | None:
    """A RequestKey from a message, a dict {"settings": {...}, "context": [...]}, or None."""
    if key is None or isinstance(key, pb.RequestKey):
        return key
    return request_key(key.get("settings"), key.get("context"))


def lookup_request(
    partition: PartitionLike,
    query: str,
    *,
    embedding: Sequence[float] | None = None,
    min_similarity: float | None = None,
    verifier_band_low: float | None = None,
    verifier_min_score: float | None = None,
    verifier_veto_score: float | None = None,
    key: KeyLike = None,
    no_store: bool = False,
    refresh: bool = False,
    max_age_seconds: int | None = None,
    lease: bool = False,
    lease_wait_ms: int | None = None,
    audit_rate: float = 0.0,
    near_miss_band: float = 0.0,
) -> pb.LookupRequest:
    """None leaves a setting to the namespace and server (see LookupRequest)."""
    request = pb.LookupRequest(
        partition=as_partition(partition), query=query, embedding=embedding or [], lease=lease, audit_rate=audit_rate,
        near_miss_band=near_miss_band, cache_control=pb.CacheControl(no_store=no_store, refresh=refresh),
    )
    for field, value in (
        ("min_similarity", min_similarity), ("verifier_band_low", verifier_band_low),
        ("verifier_min_score", verifier_min_score), ("verifier_veto_score", verifier_veto_score),
        ("lease_wait_ms", lease_wait_ms),
    ):
        if value is not None:
            setattr(request, field, value)
    if max_age_seconds is not None:
        request.cache_control.max_age_seconds = max_age_seconds
    built_key = as_key(key)
    if built_key is not None:
        request.key.CopyFrom(built_key)
    return request


def lookup_timeout(request: pb.LookupRequest, timeout_seconds: float) -> float | None:
    """A leased Lookup's timeout covers its wait for another caller's Store (the server's
    default wait, 30 s, where the request sets none); None: the client's own timeout."""
    if not request.lease:
        return None
    return timeout_seconds + (request.lease_wait_ms / 1000 if request.HasField("lease_wait_ms") else 30.0)


def store_request(
    partition: PartitionLike,
    query: str,
    response: bytes | str,
    *,
    embedding: Sequence[float] | None = None,
    ttl_seconds: int = 0,
    metadata: Mapping[str, str] | None = None,
    cost: float = 0.0,
    key: KeyLike = None,
    lease_id: str = "",
) -> pb.StoreRequest:
    if isinstance(response, str):
        response = response.encode("utf-8")
    request = pb.StoreRequest(
        partition=as_partition(partition), query=query, response=response, embedding=embedding or [],
        ttl_seconds=ttl_seconds, metadata=metadata or {}, cost=cost, lease_id=lease_id,
    )
    built_key = as_key(key)
    if built_key is not None:
        request.key.CopyFrom(built_key)
    return request


def store_batch_request(items: Sequence[Mapping[str, Any]]) -> pb.StoreBatchRequest:
    """Each item is a dict of StoreRequest fields (partition and key may be dicts)."""
    requests = []
    for item in items:
        fields = dict(item)
        fields["partition"] = as_partition(fields.get("partition"))
        if "key" in fields:
            fields["key"] = as_key(fields["key"])
        if isinstance(fields.get("response"), str):
            fields["response"] = fields["response"].encode("utf-8")
        requests.append(pb.StoreRequest(**fields))
    return pb.StoreBatchRequest(items=requests)


def cached_value(found: pb.LookupResponse) -> str | bytes:
    """A hit's response: str when it was stored from a str, else bytes."""
    return found.response.decode("utf-8") if found.metadata.get(ENCODING_KEY) == "utf-8" else found.response


def tagged_metadata(metadata: Mapping[str, str] | None, value: str | bytes) -> dict[str, str]:
    tagged = dict(metadata or {})
    if isinstance(value, str):
        tagged[ENCODING_KEY] = "utf-8"
    return tagged


def cache_unavailable(error: grpc.RpcError) -> bool:
    """True for the errors get_or_compute treats as a miss; others are the caller's bug."""
    code = error.code() if hasattr(error, "code") else None
    return code in CACHE_UNAVAILABLE_CODES


def feedback_request(
    partition: PartitionLike, lookup_id: str, correct: bool, should_match_entry_id: str, fresh_response: bytes | str,
    query: str = "", key: KeyLike = None, embedding: Sequence[float] | None = None,
) -> pb.FeedbackRequest:
    fresh = fresh_response.encode("utf-8") if isinstance(fresh_response, str) else fresh_response
    return pb.FeedbackRequest(
        partition=as_partition(partition), lookup_id=lookup_id, correct=correct, should_match_entry_id=should_match_entry_id,
        fresh_response=fresh, query=query, key=as_key(key), embedding=embedding,
    )
