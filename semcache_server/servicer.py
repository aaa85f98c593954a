"""gRPC servicer: turns requests into cache calls and errors into status codes.

The one place that knows gRPC status codes: each SemcacheError names its own
(`status_code`); anything else is INTERNAL.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from semcache_server import wire
from semcache_server.admission import Admission
from semcache_server.auth import FULL_ACCESS, Authenticator, Grant
from semcache_server.cache import SemanticCache
from semcache_server.entries import StoreItem, StoreResult
from semcache_server.errors import ResourceExhaustedError, SemcacheError, UnavailableError
from semcache_server.partition import PartitionKey
from semcache_server.v1 import semcache_pb2 as pb

log = logging.getLogger("semcache")
Request = TypeVar("Request")
Response = TypeVar("Response")
# Partitions a Stats response lists when the request does not say (StatsRequest.max_partitions).
STATS_DEFAULT_PARTITIONS = 1000


def grpc_status_for(error: SemcacheError) -> grpc.StatusCode:
    """The gRPC status code a client receives for this error."""
    return grpc.StatusCode[error.status_code]


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


def _rpc(
    method: Callable[[CacheServicer, Request, Grant, float | None], Response],
) -> Callable[[CacheServicer, Request, grpc.ServicerContext], Response]:
    """Admit, authenticate, call with the call's deadline, and map SemcacheError to its
    status code; anything else is INTERNAL, logged with the request's context."""

    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: CacheServicer, request: Request, context: grpc.ServicerContext) -> Response:
        started = time.perf_counter()
        try:
            with self.admission:
                grant = self.grant_for(context)
                response = method(self, request, grant, _deadline(context))
        except SemcacheError as e:
            code = grpc_status_for(e)
            log.debug("%s refused", name, extra={
                "rpc": name, "namespace": _request_namespace(request), "code": code.name, "reason": str(e),
            })
            context.abort(code, str(e))
        except Exception:
            log.exception("%s failed", name, extra={"rpc": name, "namespace": _request_namespace(request)})
            context.abort(grpc.StatusCode.INTERNAL, f"{name} failed; see the server log")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s ok", name, extra={
                "rpc": name, "namespace": _request_namespace(request), "ms": round((time.perf_counter() - started) * 1000, 3),
            })
        return response

    return wrapper


class CacheServicer:
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
        key = wire.partition_key(partition)
        grant.require(key.namespace)
        return key

    @_rpc
    def Lookup(self, request: pb.LookupRequest, grant: Grant, deadline: float | None) -> pb.LookupResponse:
        result = self._ready().lookup(
            self._key(request.partition, grant),
            request.query,
            embedding=request.embedding,
            min_similarity=wire.optional(request, "min_similarity"),
            deadline=deadline,
            verifier_band_low=wire.optional(request, "verifier_band_low"),
            verifier_min_score=wire.optional(request, "verifier_min_score"),
            verifier_veto_score=wire.optional(request, "verifier_veto_score"),
            request_key=wire.key_parts(request.key),
            control=wire.cache_control(request.cache_control),
            lease=request.lease,
            lease_wait_seconds=wire.lease_wait_seconds(request),
            audit_rate=wire.audit_rate(request),
            near_miss_band=wire.near_miss_band(request),
        )
        return wire.lookup_response(result)

    @_rpc
    def Store(self, request: pb.StoreRequest, grant: Grant, deadline: float | None) -> pb.StoreResponse:
        item = wire.store_item(self._key(request.partition, grant), request)
        result = self._ready().store(
            item.key, item.query, item.response, embedding=item.embedding, ttl_seconds=item.ttl_seconds,
            metadata=item.metadata, cost=item.cost, deadline=deadline, request_key=item.request_key, lease_id=item.lease_id,
        )
        return wire.store_response(result)

    @_rpc
    def Feedback(self, request: pb.FeedbackRequest, grant: Grant, deadline: float | None) -> pb.FeedbackResponse:
        missed = None  # the missed Lookup, sent again for an alias
        if request.query or request.embedding:
            missed = (request.query, request.embedding, wire.key_parts(request.key))
        result = self._ready().feedback(
            self._key(request.partition, grant), request.lookup_id, request.correct, request.should_match_entry_id,
            request.fresh_response, missed=missed,
        )
        return pb.FeedbackResponse(counted=result.counted, vetoed=result.vetoed, alias_entry_id=result.alias_entry_id)

    @_rpc
    def ReleaseLease(self, request: pb.ReleaseLeaseRequest, grant: Grant, deadline: float | None) -> pb.ReleaseLeaseResponse:
        released = self._ready().release_lease(self._key(request.partition, grant), request.lease_id)
        return pb.ReleaseLeaseResponse(released=released)

    @_rpc
    def StoreBatch(self, request: pb.StoreBatchRequest, grant: Grant, deadline: float | None) -> pb.StoreBatchResponse:
        cache = self._ready()
        if len(request.items) > self.max_batch_items:
            raise ResourceExhaustedError(f"{len(request.items)} items; the limit per StoreBatch is {self.max_batch_items}")
        items: list[StoreItem | SemcacheError] = []
        for item in request.items:
            try:
                items.append(wire.store_item(self._key(item.partition, grant), item))
            except SemcacheError as e:
                items.append(e)
        valid = [i for i in items if isinstance(i, StoreItem)]
        stored = iter(cache.store_batch(valid, deadline))
        results = []
        for entry in items:
            outcome = entry if isinstance(entry, SemcacheError) else next(stored)
            if isinstance(outcome, StoreResult):
                results.append(pb.StoreBatchResult(stored=wire.store_response(outcome)))
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
            calibrations = cache.calibrations(lambda namespace: namespace == key.namespace)
        else:
            view = cache.stats(allowed=allowed, listed=listed)
            calibrations = cache.calibrations(allowed)
        return wire.stats_response(view, cache.embedding_model, cache.dimension, calibrations)
