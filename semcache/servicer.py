"""gRPC servicer: turns requests into cache calls and errors into status codes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from semcache.cache import COUNTERS, SemanticCache
from semcache.errors import SemcacheError, UnavailableError, grpc_status_for
from semcache.partition import PartitionKey
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc

log = logging.getLogger("semcache")
Handler = TypeVar("Handler", bound=Callable[..., Any])


def partition_key(partition: pb.Partition) -> PartitionKey:
    return PartitionKey.resolve(
        namespace=partition.namespace,
        model=partition.model,
        prompt_version=partition.prompt_version,
        system_prompt=partition.system_prompt,
    )


def _rpc(method: Handler) -> Handler:
    """Map SemcacheError to its status code; anything else is INTERNAL, logged with context."""

    @functools.wraps(method)
    def wrapper(self: CacheServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except SemcacheError as e:
            context.abort(grpc_status_for(e), str(e))
        except Exception:
            log.exception("%s failed (partition=%s)", method.__name__, getattr(request, "partition", None))
            context.abort(grpc.StatusCode.INTERNAL, f"{method.__name__} failed; see the server log")

    return wrapper  # type: ignore[return-value]


class CacheServicer(pb_grpc.SemanticCacheServicer):
    """Serves semcache.v1.SemanticCache; UNAVAILABLE until the cache is attached."""

    def __init__(self) -> None:
        self.cache: SemanticCache | None = None

    def _ready(self) -> SemanticCache:
        if self.cache is None:
            raise UnavailableError("semcache is starting or shutting down")
        return self.cache

    @_rpc
    def Lookup(self, request: pb.LookupRequest, context: grpc.ServicerContext) -> pb.LookupResponse:
        result = self._ready().lookup(
            partition_key(request.partition),
            request.query,
            embedding=request.embedding,
            min_similarity=request.min_similarity if request.HasField("min_similarity") else None,
        )
        return pb.LookupResponse(
            hit=result.hit,
            entry_id=result.entry_id,
            response=result.response,
            similarity=result.similarity or 0.0,
            matched_query=result.matched_query,
            exact=result.exact,
            threshold=result.threshold,
            metadata=result.metadata,
            resolved_version=result.resolved_version,
        )

    @_rpc
    def Store(self, request: pb.StoreRequest, context: grpc.ServicerContext) -> pb.StoreResponse:
        result = self._ready().store(
            partition_key(request.partition),
            request.query,
            request.response,
            embedding=request.embedding,
            ttl_seconds=request.ttl_seconds,
            metadata=request.metadata,
            cost=request.cost,
        )
        return pb.StoreResponse(
            entry_id=result.entry_id,
            replaced=result.replaced,
            expires_at=result.expires_at,
            resolved_version=result.resolved_version,
        )

    @_rpc
    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteResponse:
        deleted = self._ready().delete(partition_key(request.partition), request.entry_id)
        return pb.DeleteResponse(deleted=deleted)

    @_rpc
    def Invalidate(self, request: pb.InvalidateRequest, context: grpc.ServicerContext) -> pb.InvalidateResponse:
        removed = self._ready().invalidate(
            partition_key(request.partition),
            all_versions=request.all_versions,
            whole_namespace=request.whole_namespace,
            metadata_match=request.metadata_match,
        )
        return pb.InvalidateResponse(removed=removed)

    @_rpc
    def SetNamespaceThreshold(
        self, request: pb.SetNamespaceThresholdRequest, context: grpc.ServicerContext
    ) -> pb.SetNamespaceThresholdResponse:
        namespace = PartitionKey.resolve(namespace=request.namespace).namespace
        value = request.min_similarity if request.HasField("min_similarity") else None
        return pb.SetNamespaceThresholdResponse(min_similarity=self._ready().set_namespace_threshold(namespace, value))

    @_rpc
    def Stats(self, request: pb.StatsRequest, context: grpc.ServicerContext) -> pb.StatsResponse:
        cache = self._ready()
        if request.HasField("partition"):
            key = partition_key(request.partition)
            view = cache.stats(key.namespace, key.model, key.version)
        else:
            view = cache.stats()
        return pb.StatsResponse(
            entries=view.entries,
            bytes=view.bytes,
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
