"""Protobuf conversion: semcache.v1 messages to engine calls' arguments, engine results
to messages. No gRPC here; the servicer owns calls and status codes."""

from __future__ import annotations

import dataclasses
from typing import Any

from semcache_server.cache_control import CacheControl
from semcache_server.calibration import Calibrated
from semcache_server.entries import COUNTERS, LookupResult, StatsView, StoreItem, StoreResult
from semcache_server.errors import InvalidArgumentError
from semcache_server.feedback import wilson_interval
from semcache_server.key_fingerprint import NO_KEY, KeyParts, Turn
from semcache_server.partition import PartitionKey
from semcache_server.v1 import semcache_pb2 as pb
from semcache_server.v1.records_pb2 import PartitionRecord


def partition_key(partition: pb.Partition) -> PartitionKey:
    return PartitionKey.resolve(
        namespace=partition.namespace,
        model=partition.model,
        prompt_version=partition.prompt_version,
        system_prompt=partition.system_prompt,
    )


def optional(request: Any, field: str) -> Any:
    """An optional field's value, None when the request does not set it."""
    return getattr(request, field) if request.HasField(field) else None


def key_parts(key: pb.RequestKey) -> KeyParts:
    if not key.settings and not key.context:
        return NO_KEY
    return KeyParts(dict(key.settings), tuple(Turn(t.role, t.content) for t in key.context))


def cache_control(control: pb.CacheControl) -> CacheControl:
    return CacheControl(control.no_store, control.refresh, optional(control, "max_age_seconds"))


def lease_wait_seconds(request: pb.LookupRequest) -> float | None:
    milliseconds = optional(request, "lease_wait_ms")
    return None if milliseconds is None else milliseconds / 1000.0


def audit_rate(request: pb.LookupRequest) -> float:
    if not 0.0 <= request.audit_rate <= 1.0:  # NaN fails too
        raise InvalidArgumentError(f"audit_rate must be between 0 and 1, got {request.audit_rate}")
    return request.audit_rate


def near_miss_band(request: pb.LookupRequest) -> float:
    if not 0.0 <= request.near_miss_band <= 1.0:  # NaN fails too
        raise InvalidArgumentError(f"near_miss_band must be between 0 and 1, got {request.near_miss_band}")
    return request.near_miss_band


def lookup_response(result: LookupResult) -> pb.LookupResponse:
    response = pb.LookupResponse(
        hit=result.hit,
        entry_id=result.entry_id,
        response=result.response,
        similarity=result.similarity or 0.0,
        matched_query=result.matched_query,
        exact=result.exact,
        threshold=result.threshold,
        resolved_version=result.resolved_version,
        guard_reason=result.guard_reason,
        decided_by=result.decided_by,
        lease_id=result.lease_id,
        coalesced=result.coalesced,
        waited_ms=result.waited_ms,
        lookup_id=result.lookup_id,
        audit=result.audit,
        audit_entry_id=result.audit_entry_id,
        audit_response=result.audit_response,
        near_miss_entry_id=result.near_miss_entry_id,
        near_miss_query=result.near_miss_query,
        near_miss_response=result.near_miss_response,
    )
    if result.verifier_score is not None:
        response.verifier_score = result.verifier_score
    if result.metadata:  # a map field copies item by item in Python, even when empty (~2 us)
        response.metadata.update(result.metadata)
    return response


def store_item(key: PartitionKey, item: pb.StoreRequest) -> StoreItem:
    return StoreItem(
        key, item.query, item.response, embedding=item.embedding, ttl_seconds=item.ttl_seconds,
        metadata=item.metadata, cost=item.cost, request_key=key_parts(item.key), lease_id=item.lease_id,
    )


def store_response(result: StoreResult) -> pb.StoreResponse:
    return pb.StoreResponse(
        entry_id=result.entry_id,
        replaced=result.replaced,
        expires_at=result.expires_at,
        resolved_version=result.resolved_version,
    )


def stats_response(
    view: StatsView, embedding_model: str, embedding_dimension: int, calibrations: list[Calibrated],
) -> pb.StatsResponse:
    return pb.StatsResponse(
        calibrations=[pb.NamespaceCalibration(**dataclasses.asdict(c)) for c in calibrations],
        entries=view.entries,
        bytes=view.bytes,
        partitions_total=view.partitions_total,
        damaged_entries=view.damaged_entries,
        embedding_model=embedding_model,
        embedding_dimension=embedding_dimension,
        partitions=[
            pb.PartitionStats(
                namespace=p.key.namespace,
                model=p.key.model,
                prompt_version=p.key.version,
                entries=p.entries,
                bytes=p.bytes,
                last_used_at=p.record.last_used_at,
                false_hit_rate=false_hit_estimate(p.record),
                **{name: getattr(p.record, name) for name in COUNTERS},
            )
            for p in view.partitions
        ],
        false_hit_rate=false_hit_estimate(view.totals),
        **{name: getattr(view.totals, name) for name in COUNTERS},
    )


def false_hit_estimate(counters: PartitionRecord) -> pb.FalseHitEstimate:
    verdicts = counters.verdicts_correct + counters.verdicts_wrong
    low, high = wilson_interval(counters.verdicts_wrong, verdicts)
    estimate = counters.verdicts_wrong / verdicts if verdicts else 0.0
    return pb.FalseHitEstimate(estimate=estimate, low=low, high=high, verdicts=verdicts)
