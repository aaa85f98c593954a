"""gRPC servicer: turns requests into cache calls and errors into status codes."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from semcache.auth import FULL_ACCESS, Authenticator, Grant
from semcache.cache import COUNTERS, SemanticCache, StoreItem, StoreResult
from semcache.errors import OverloadedError, ResourceExhaustedError, SemcacheError, UnavailableError, grpc_status_for
from semcache.partition import PartitionKey
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc

log = logging.getLogger("semcache")
Handler = TypeVar("Handler", bound=Callable[..., Any])
# Partitions a Stats response lists when the request does not say (StatsRequest.max_partitions).
STATS_DEFAULT_PARTITIONS = 1000


def partition_key(partition: pb.Partition) -> PartitionKey:
    return PartitionKey.resolve(
        namespace=partition.namespace,
        model=partition.model,
        prompt_version=partition.prompt_version,
        system_prompt=partition.system_prompt,
    )


def _store_response(result: StoreResult) -> pb.StoreResponse:
    return pb.StoreResponse(
        entry_id=result.entry_id,
        replaced=result.replaced,
        expires_at=result.expires_at,
        resolved_version=result.resolved_version,
    )


def _request_namespace(request: Any) -> str:
    if hasattr(request, "partition"):
        return request.partition.namespace
    return getattr(request, "namespace", "")


# A call with no deadline reports ~9e18 seconds remaining.
_NO_DEADLINE_SECONDS = 1e9


def _deadline(context: grpc.ServicerContext) -> float | None:
    """The call's deadline on time.monotonic(), or None when the client set none."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > _NO_DEADLINE_SECONDS else time.monotonic() + remaining


class Admission:
    """At most `limit` cache requests in progress at once; one more is refused at once
    (OverloadedError, RESOURCE_EXHAUSTED) instead of queueing behind work that already
    keeps the model busy: a caller of a cache does better to treat it as a miss now
    than to wait. Health checks are not counted, so probes still answer under overload."""

    def __init__(self, limit: int, on_refused: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.in_progress = 0
        self._on_refused = on_refused
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        with self._lock:
            admitted = self.in_progress < self.limit
            if admitted:
                self.in_progress += 1
        if not admitted:
            if self._on_refused is not None:
                self._on_refused()
            raise OverloadedError(
                f"{self.limit} requests are already in progress (grpc_workers); retry later or treat this as a miss"
            )

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.in_progress -= 1


def _rpc(method: Handler) -> Handler:
    """Admit, authenticate, call with the call's deadline, and map SemcacheError to its
    status code; anything else is INTERNAL, logged with the request's context."""

    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: CacheServicer, request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            with self.admission:
                grant = self.grant_for(context)
                response = method(self, request, grant, _deadline(context))
        except SemcacheError as e:
            code = grpc_status_for(e)
            log.debug("%s refused", name, extra={"rpc": name, "namespace": _request_namespace(request), "code": code.name, "reason": str(e)})
            context.abort(code, str(e))
        except Exception:
            log.exception("%s failed", name, extra={"rpc": name, "namespace": _request_namespace(request)})
            context.abort(grpc.StatusCode.INTERNAL, f"{name} failed; see the server log")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s ok", name, extra={
                "rpc": name, "namespace": _request_namespace(request), "ms": round((time.perf_counter() - started) * 1000, 3),
            })
        return response

    return wrapper  # type: ignore[return-value]


class CacheServicer(pb_grpc.SemanticCacheServicer):
    """Serves semcache.v1.SemanticCache; UNAVAILABLE until the cache is attached."""

    def __init__(self, authenticator: Authenticator | None, admission: Admission, *, max_batch_items: int = 1000) -> None:
        self.cache: SemanticCache | None = None
        self.max_batch_items = max_batch_items
        self.admission = admission
        self._authenticator = authenticator

    def grant_for(self, context: grpc.ServicerContext) -> Grant:
        if self._authenticator is None:
            return FULL_ACCESS
        return self._authenticator.grant_for(context.invocation_metadata())

    def _ready(self) -> SemanticCache:
        cache = self.cache
        if cache is None:
            raise UnavailableError("semcache is starting or shutting down")
        return cache

    def _key(self, partition: pb.Partition, grant: Grant) -> PartitionKey:
        key = partition_key(partition)
        grant.require(key.namespace)
        return key

    @_rpc
    def Lookup(self, request: pb.LookupRequest, grant: Grant, deadline: float | None) -> pb.LookupResponse:
        result = self._ready().lookup(
            self._key(request.partition, grant),
            request.query,
            embedding=request.embedding,
            min_similarity=request.min_similarity if request.HasField("min_similarity") else None,
            deadline=deadline,
        )
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
        )
        if result.metadata:  # a map field copies item by item in Python, even when empty (~2 us)
            response.metadata.update(result.metadata)
        return response

    @_rpc
    def Store(self, request: pb.StoreRequest, grant: Grant, deadline: float | None) -> pb.StoreResponse:
        result = self._ready().store(
            self._key(request.partition, grant),
            request.query,
            request.response,
            embedding=request.embedding,
            ttl_seconds=request.ttl_seconds,
            metadata=request.metadata,
            cost=request.cost,
            deadline=deadline,
        )
        return _store_response(result)

    @_rpc
    def StoreBatch(self, request: pb.StoreBatchRequest, grant: Grant, deadline: float | None) -> pb.StoreBatchResponse:
        cache = self._ready()
        if len(request.items) > self.max_batch_items:
            raise ResourceExhaustedError(f"{len(request.items)} items; the limit per StoreBatch is {self.max_batch_items}")
        items: list[StoreItem | SemcacheError] = []
        for item in request.items:
            try:
                key = self._key(item.partition, grant)
            except SemcacheError as e:
                items.append(e)
                continue
            items.append(StoreItem(
                key, item.query, item.response, embedding=item.embedding, ttl_seconds=item.ttl_seconds,
                metadata=item.metadata, cost=item.cost,
            ))
        valid = [i for i in items if isinstance(i, StoreItem)]
        stored = iter(cache.store_batch(valid, deadline))
        results = []
        for item in items:
            outcome = item if isinstance(item, SemcacheError) else next(stored)
            if isinstance(outcome, StoreResult):
                results.append(pb.StoreBatchResult(stored=_store_response(outcome)))
            else:
                code = grpc_status_for(outcome)
                results.append(pb.StoreBatchResult(error_code=code.value[0], error_message=str(outcome)))
        return pb.StoreBatchResponse(results=results)

    @_rpc
    def Delete(self, request: pb.DeleteRequest, grant: Grant, deadline: float | None) -> pb.DeleteResponse:
        deleted = self._ready().delete(self._key(request.partition, grant), request.entry_id)
        return pb.DeleteResponse(deleted=deleted)

    @_rpc
    def Invalidate(self, request: pb.InvalidateRequest, grant: Grant, deadline: float | None) -> pb.InvalidateResponse:
        removed = self._ready().invalidate(
            self._key(request.partition, grant),
            all_versions=request.all_versions,
            whole_namespace=request.whole_namespace,
            metadata_match=request.metadata_match,
        )
        return pb.InvalidateResponse(removed=removed)

    @_rpc
    def SetNamespaceThreshold(
        self, request: pb.SetNamespaceThresholdRequest, grant: Grant, deadline: float | None
    ) -> pb.SetNamespaceThresholdResponse:
        namespace = PartitionKey.resolve(namespace=request.namespace).namespace
        grant.require(namespace)
        value = request.min_similarity if request.HasField("min_similarity") else None
        return pb.SetNamespaceThresholdResponse(min_similarity=self._ready().set_namespace_threshold(namespace, value))

    @_rpc
    def Stats(self, request: pb.StatsRequest, grant: Grant, deadline: float | None) -> pb.StatsResponse:
        cache = self._ready()
        allowed = None if grant.all else grant.allows
        listed = request.max_partitions or STATS_DEFAULT_PARTITIONS
        if request.HasField("partition"):
            key = self._key(request.partition, grant)
            view = cache.stats(key.namespace, key.model, key.version, listed=listed)
        else:
            view = cache.stats(allowed=allowed, listed=listed)
        return pb.StatsResponse(
            entries=view.entries,
            bytes=view.bytes,
            partitions_total=view.partitions_total,
            embedding_model=cache.embedding_model,
            embedding_dimension=cache.dimension,
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
