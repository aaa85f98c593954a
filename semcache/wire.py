"""Protobuf conversion: semcache.v1 messages to engine calls' arguments, engine results
to messages. No gRPC here; the servicer owns calls and status codes."""

from __future__ import annotations

from semcache.entries import COUNTERS, LookupResult, StatsView, StoreItem, StoreResult
from semcache.partition import PartitionKey
from semcache.v1 import semcache_pb2 as pb


def partition_key(partition: pb.Partition) -> PartitionKey:
    return PartitionKey.resolve(
        namespace=partition.namespace,
        model=partition.model,
        prompt_version=partition.prompt_version,
        system_prompt=partition.system_prompt,
    )


def optional(request: pb.LookupRequest, field: str) -> float | None:
    """An optional float field's value, None when the request does not set it."""
    return getattr(request, field) if request.HasField(field) else None


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
    )
    if result.verifier_score is not None:
        response.verifier_score = result.verifier_score
    if result.metadata:  # a map field copies item by item in Python, even when empty (~2 us)
        response.metadata.update(result.metadata)
    return response


def store_item(key: PartitionKey, item: pb.StoreRequest) -> StoreItem:
    return StoreItem(
        key, item.query, item.response, embedding=item.embedding, ttl_seconds=item.ttl_seconds,
        metadata=item.metadata, cost=item.cost,
    )


def store_response(result: StoreResult) -> pb.StoreResponse:
    return pb.StoreResponse(
        entry_id=result.entry_id,
        replaced=result.replaced,
        expires_at=result.expires_at,
        resolved_version=result.resolved_version,
    )


def stats_response(view: StatsView, embedding_model: str, embedding_dimension: int) -> pb.StatsResponse:
    return pb.StatsResponse(
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
                **{name: getattr(p.record, name) for name in COUNTERS},
            )
            for p in view.partitions
        ],
        **{name: getattr(view.totals, name) for name in COUNTERS},
    )
