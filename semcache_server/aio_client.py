"""The asyncio client (grpc.aio): the same calls as `semcache_server.client.Client`, awaited."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

import grpc
from grpc import aio

import semcache_server.client_requests as build
from semcache_server.audits import MAX_AUDITS_IN_FLIGHT, Judge, MissCheck, Same, miss_check, miss_feedback, verdict
from semcache_server.client import secure_or_insecure_channel
from semcache_server.client_requests import KeyLike, PartitionLike, as_partition, cache_unavailable, cached_value, tagged_metadata
from semcache_server.v1 import semcache_pb2 as pb
from semcache_server.v1 import semcache_pb2_grpc as pb_grpc

log = logging.getLogger("semcache")


class AsyncClient:
    """Example:
        async with AsyncClient("127.0.0.1:50051") as cache:
            answer = await cache.get_or_compute({"namespace": "faq"}, question, ask_llm_async)
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        timeout_seconds: float = 30.0,
        token: str | None = None,
        root_certificates: bytes | None = None,
        channel: aio.Channel | None = None,
    ) -> None:
        self._channel = channel or secure_or_insecure_channel(address, root_certificates, aio)
        self._stub = pb_grpc.SemanticCacheStub(self._channel)
        self._timeout_seconds = timeout_seconds
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._audits: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        if self._audits:  # let the audits in flight send their verdicts
            await asyncio.gather(*self._audits, return_exceptions=True)
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: Callable[..., Awaitable[Any]], request: Any, timeout_seconds: float | None = None) -> Any:
        return await method(request, timeout=timeout_seconds or self._timeout_seconds, metadata=self._metadata)

    async def lookup(self, partition: PartitionLike, query: str, **options: Any) -> pb.LookupResponse:
        """As Client.lookup."""
        request = build.lookup_request(partition, query, **options)
        return await self._call(self._stub.Lookup, request, build.lookup_timeout(request, self._timeout_seconds))

    async def store(self, partition: PartitionLike, query: str, response: bytes | str, **options: Any) -> pb.StoreResponse:
        """As Client.store."""
        return await self._call(self._stub.Store, build.store_request(partition, query, response, **options))

    async def store_batch(self, items: Sequence[Mapping[str, Any]]) -> pb.StoreBatchResponse:
        return await self._call(self._stub.StoreBatch, build.store_batch_request(items))

    async def release_lease(self, partition: PartitionLike, lease_id: str) -> bool:
        request = pb.ReleaseLeaseRequest(partition=as_partition(partition), lease_id=lease_id)
        return (await self._call(self._stub.ReleaseLease, request)).released

    async def feedback(
        self, partition: PartitionLike, lookup_id: str, correct: bool, *, should_match_entry_id: str = "",
        fresh_response: bytes | str = b"", query: str = "", key: KeyLike = None, embedding: Sequence[float] | None = None,
    ) -> pb.FeedbackResponse:
        """As Client.feedback."""
        request = build.feedback_request(
            partition, lookup_id, correct, should_match_entry_id, fresh_response, query, key, embedding,
        )
        return await self._call(self._stub.Feedback, request)

    async def delete(self, partition: PartitionLike, entry_id: str) -> bool:
        request = pb.DeleteRequest(partition=as_partition(partition), entry_id=entry_id)
        return (await self._call(self._stub.Delete, request)).deleted

    async def invalidate(self, partition: PartitionLike, **scope: Any) -> int:
        """As Client.invalidate: all_versions, whole_namespace, metadata_match."""
        request = pb.InvalidateRequest(partition=as_partition(partition), **scope)
        return (await self._call(self._stub.Invalidate, request)).removed

    async def stats(self, partition: PartitionLike = None, *, max_partitions: int = 0) -> pb.StatsResponse:
        request = pb.StatsRequest(max_partitions=max_partitions)
        if partition is not None:
            request.partition.CopyFrom(as_partition(partition))
        return await self._call(self._stub.Stats, request)

    async def set_namespace_threshold(self, namespace: str, min_similarity: float | None) -> float:
        request = pb.SetNamespaceThresholdRequest(namespace=namespace)
        if min_similarity is not None:
            request.min_similarity = min_similarity
        return (await self._call(self._stub.SetNamespaceThreshold, request)).min_similarity

    async def lookup_or_none(self, partition: PartitionLike, query: str, **options: Any) -> pb.LookupResponse | None:
        try:
            return await self.lookup(partition, query, **options)
        except grpc.RpcError as e:
            if not cache_unavailable(e):
                raise
            return None

    async def store_or_skip(self, partition: PartitionLike, query: str, value: str | bytes, **options: Any) -> None:
        try:
            await self.store(partition, query, value, **options)
        except grpc.RpcError as e:
            if not cache_unavailable(e):
                raise

    async def release_or_skip(self, partition: PartitionLike, lease_id: str) -> None:
        if not lease_id:
            return
        try:
            await self.release_lease(partition, lease_id)
        except grpc.RpcError:
            return  # the lease expires on its own

    async def get_or_compute(
        self,
        partition: PartitionLike,
        query: str,
        compute: Callable[[], Awaitable[str | bytes]],
        *,
        ttl_seconds: int = 0,
        metadata: Mapping[str, str] | None = None,
        cost: float = 0.0,
        min_similarity: float | None = None,
        embedding: Sequence[float] | None = None,
        key: KeyLike = None,
        no_store: bool = False,
        refresh: bool = False,
        max_age_seconds: int | None = None,
        coalesce: bool = True,
        lease_wait_ms: int | None = None,
        audit_rate: float = 0.0,
        same: Same | None = None,
        judge: Judge | None = None,
        near_miss_band: float = 0.1,
    ) -> str | bytes:
        """As Client.get_or_compute, with `compute` a coroutine function; audits run as
        tasks, and so does `judge` (a plain function or a coroutine function)."""
        judged = judge is not None and not no_store
        found = await self.lookup_or_none(
            partition, query, embedding=embedding, min_similarity=min_similarity, key=key, no_store=no_store,
            refresh=refresh, max_age_seconds=max_age_seconds, lease=coalesce and not no_store, lease_wait_ms=lease_wait_ms,
            audit_rate=audit_rate, near_miss_band=near_miss_band if judged else 0.0,
        )
        if found is not None and found.hit:
            if found.audit:
                self._audit(partition, found.lookup_id, compute(), cached_value(found), same)
            return cached_value(found)
        lease_id = found.lease_id if found is not None else ""
        try:
            value = await compute()
        except BaseException:
            await self.release_or_skip(partition, lease_id)
            raise
        if not no_store:
            await self.store_or_skip(
                partition, query, value, embedding=embedding, ttl_seconds=ttl_seconds,
                metadata=tagged_metadata(metadata, value), cost=cost, key=key, lease_id=lease_id,
            )
        check = miss_check(found, query, value, judged, key, embedding) if found is not None else None
        if check is not None:  # after the Store: an alias the judge makes replaces the fresh entry
            self._start(self._check_miss(partition, check, same, judge))
        return value

    def _audit(self, partition: PartitionLike, lookup_id: str, fresh: Awaitable[Any], cached: Any, same: Same | None) -> None:
        """Judge one audited hit in a task of its own (see semcache_server/audits.py)."""
        async def judge() -> None:
            correct, fresh_response = verdict(await fresh, cached, same)
            await self.feedback(partition, lookup_id, correct, fresh_response=fresh_response)

        if not self._start(judge()) and inspect.iscoroutine(fresh):
            fresh.close()

    async def _check_miss(self, partition: PartitionLike, check: MissCheck, same: Same | None, judge: Judge | None) -> None:
        confirmed = False
        if judge is not None and check.near_miss is not None:
            _, candidate_query, candidate = check.near_miss
            found = judge(check.query, candidate_query, candidate)
            confirmed = bool(await found if inspect.isawaitable(found) else found)
        arguments = miss_feedback(check, same, confirmed)
        if arguments is not None:
            await self.feedback(partition, check.lookup_id, **arguments)

    def _start(self, check: Coroutine[Any, Any, None]) -> bool:
        """Run one background check as a task of its own; False (and closed) when too many are in flight."""
        if len(self._audits) >= MAX_AUDITS_IN_FLIGHT:
            log.warning("an audit was skipped: %d already in flight", len(self._audits))
            check.close()
            return False

        async def guarded() -> None:
            try:
                await check
            except Exception as e:  # an audit never fails the app: its verdict is just not sent
                log.warning("an audit failed: %s", e)

        task = asyncio.get_running_loop().create_task(guarded())
        self._audits.add(task)
        task.add_done_callback(self._audits.discard)
        return True
