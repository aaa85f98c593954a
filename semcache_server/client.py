"""A thin Python client over the gRPC API (see semcache_server.aio_client for asyncio)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

import semcache_server.client_requests as build
from semcache_server.audits import Audits, Judge, Same, miss_check
from semcache_server.client_requests import (
    CACHE_UNAVAILABLE_CODES,
    KeyLike,
    PartitionLike,
    as_key,
    as_partition,
    cache_unavailable,
    cached_value,
    request_key,
    tagged_metadata,
)
from semcache_server.v1 import semcache_pb2 as pb
from semcache_server.v1 import semcache_pb2_grpc as pb_grpc

Partition = pb.Partition
__all__ = [
    "CACHE_UNAVAILABLE_CODES", "Client", "KeyLike", "Partition", "PartitionLike", "as_key", "as_partition", "request_key",
]


def secure_or_insecure_channel(address: str, root_certificates: bytes | None, module: Any = grpc) -> Any:
    """A channel to address (TLS with root_certificates); module: grpc or grpc.aio."""
    if root_certificates is not None:
        return module.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=root_certificates))
    return module.insecure_channel(address)


class Client:
    """Calls a semcache server. Responses are the protobuf messages of semcache.v1.

    Example:
        with Client("127.0.0.1:50051") as cache:
            answer = cache.get_or_compute({"namespace": "faq"}, "What is your return policy?", ask_llm)
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        timeout_seconds: float = 30.0,
        token: str | None = None,
        root_certificates: bytes | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        self._channel = channel or secure_or_insecure_channel(address, root_certificates)
        self._stub = pb_grpc.SemanticCacheStub(self._channel)
        self._timeout_seconds = timeout_seconds
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.audits = Audits(self.feedback)

    def close(self) -> None:
        self.audits.close()
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., Any], request: Any, timeout_seconds: float | None = None) -> Any:
        return method(request, timeout=timeout_seconds or self._timeout_seconds, metadata=self._metadata)

    def lookup(self, partition: PartitionLike, query: str, **options: Any) -> pb.LookupResponse:
        """Options (see LookupRequest; None leaves a setting to the namespace and server):
        embedding, min_similarity, verifier_band_low, verifier_min_score, verifier_veto_score, key (settings,
        tools and context: see request_key), no_store, refresh, max_age_seconds, lease,
        lease_wait_ms, audit_rate, near_miss_band. A leased Lookup may wait up to lease_wait_ms (plus the timeout)."""
        request = build.lookup_request(partition, query, **options)
        return self._call(self._stub.Lookup, request, build.lookup_timeout(request, self._timeout_seconds))

    def store(self, partition: PartitionLike, query: str, response: bytes | str, **options: Any) -> pb.StoreResponse:
        """Options: embedding, ttl_seconds, metadata, cost, key (as in its Lookup), lease_id."""
        return self._call(self._stub.Store, build.store_request(partition, query, response, **options))

    def store_batch(self, items: Sequence[Mapping[str, Any]]) -> pb.StoreBatchResponse:
        """Store many entries in one call. Each item is a dict of StoreRequest fields
        (partition and key may be dicts); results come back in order, each stored or failed alone."""
        return self._call(self._stub.StoreBatch, build.store_batch_request(items))

    def release_lease(self, partition: PartitionLike, lease_id: str) -> bool:
        """Give up a lease without storing (the LLM call failed): its waiters take over."""
        request = pb.ReleaseLeaseRequest(partition=as_partition(partition), lease_id=lease_id)
        return self._call(self._stub.ReleaseLease, request).released

    def feedback(
        self, partition: PartitionLike, lookup_id: str, correct: bool, *, should_match_entry_id: str = "",
        fresh_response: bytes | str = b"", query: str = "", key: KeyLike = None, embedding: Sequence[float] | None = None,
    ) -> pb.FeedbackResponse:
        """A verdict on a Lookup (its response's lookup_id): was the served answer right? For
        a miss, should_match_entry_id names the entry that should have answered. For an
        audited Lookup, fresh_response (the answer computed now) lets the server judge. With
        should_match_entry_id, query and key (and embedding, where the app embeds) are the
        missed Lookup's: the server needs them when it no longer holds that Lookup (after
        a restart, or on another frontend)."""
        request = build.feedback_request(
            partition, lookup_id, correct, should_match_entry_id, fresh_response, query, key, embedding,
        )
        return self._call(self._stub.Feedback, request)

    def delete(self, partition: PartitionLike, entry_id: str) -> bool:
        request = pb.DeleteRequest(partition=as_partition(partition), entry_id=entry_id)
        return self._call(self._stub.Delete, request).deleted

    def invalidate(
        self,
        partition: PartitionLike,
        *,
        all_versions: bool = False,
        whole_namespace: bool = False,
        metadata_match: Mapping[str, str] | None = None,
    ) -> int:
        """Remove a partition, every version of its model, or its whole namespace; with
        metadata_match, only entries whose metadata has every given pair. Returns the count."""
        request = pb.InvalidateRequest(
            partition=as_partition(partition),
            all_versions=all_versions,
            whole_namespace=whole_namespace,
            metadata_match=metadata_match or {},
        )
        return self._call(self._stub.Invalidate, request).removed

    def stats(self, partition: PartitionLike = None, *, max_partitions: int = 0) -> pb.StatsResponse:
        """Counters of the server, or of one namespace (model, version) with `partition`;
        `.partitions` lists at most max_partitions (0: the server's default, 1000) of
        the `.partitions_total` that matched."""
        request = pb.StatsRequest(max_partitions=max_partitions)
        if partition is not None:
            request.partition.CopyFrom(as_partition(partition))
        return self._call(self._stub.Stats, request)

    def set_namespace_threshold(self, namespace: str, min_similarity: float | None) -> float:
        """Set (None: clear) the namespace's persisted threshold; returns the one now in force."""
        request = pb.SetNamespaceThresholdRequest(namespace=namespace)
        if min_similarity is not None:
            request.min_similarity = min_similarity
        return self._call(self._stub.SetNamespaceThreshold, request).min_similarity

    def lookup_or_none(self, partition: PartitionLike, query: str, **options: Any) -> pb.LookupResponse | None:
        """lookup(), or None when the cache cannot answer now (CACHE_UNAVAILABLE_CODES)."""
        try:
            return self.lookup(partition, query, **options)
        except grpc.RpcError as e:
            if not cache_unavailable(e):
                raise
            return None

    def store_or_skip(self, partition: PartitionLike, query: str, value: str | bytes, **options: Any) -> None:
        """store(), skipped when the cache cannot take it now (CACHE_UNAVAILABLE_CODES)."""
        try:
            self.store(partition, query, value, **options)
        except grpc.RpcError as e:
            if not cache_unavailable(e):
                raise

    def release_or_skip(self, partition: PartitionLike, lease_id: str) -> None:
        if lease_id:
            with contextlib.suppress(grpc.RpcError):  # the lease expires on its own
                self.release_lease(partition, lease_id)

    def get_or_compute(
        self,
        partition: PartitionLike,
        query: str,
        compute: Callable[[], str | bytes],
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
        """The cached response when one matches; otherwise compute(), stored, then returned.

        embedding: the query's vector, where the app embeds (else the server's model does).
        key: the request's settings, tools and context (see request_key); only an entry
        stored under an agreeing key answers. no_store: never store this one; refresh:
        skip the lookup and store a fresh answer; max_age_seconds: accept only younger
        entries. coalesce: concurrent misses of the same question compute once (the
        others wait up to lease_wait_ms for its Store).

        A str from compute is stored as UTF-8 and a hit is returned as str; bytes stay bytes.
        When the cache cannot answer now (CACHE_UNAVAILABLE_CODES: overloaded, past the
        timeout, not running), the Lookup counts as a miss and a failed Store is skipped:
        compute()'s value is returned all the same. Other errors (a bad request, a
        refused token) are raised. If compute() raises, the lease is released.

        audit_rate: the share of Lookups the server may draw for a shadow check, which
        calls compute() anyway, off this call's path, and reports whether the cached answer
        was right (`same(fresh, cached)`, else the server compares their embeddings);
        see semcache_server/audits.py.

        judge: the app's judge of near misses, `judge(query, candidate_query,
        candidate_answer) -> bool`, asked off this call's path about a miss whose best
        candidate came within near_miss_band under the threshold; a yes makes this query
        an alias of that candidate (see semcache_server/audits.py).
        """
        found = self.lookup_or_none(
            partition, query, embedding=embedding, min_similarity=min_similarity, key=key, no_store=no_store, refresh=refresh,
            max_age_seconds=max_age_seconds, lease=coalesce and not no_store, lease_wait_ms=lease_wait_ms,
            audit_rate=audit_rate, near_miss_band=near_miss_band if judge is not None and not no_store else 0.0,
        )
        if found is not None and found.hit:
            if found.audit:
                self.audits.hit(partition, found.lookup_id, cached_value(found), compute, same)
            return cached_value(found)
        lease_id = found.lease_id if found is not None else ""
        try:
            value = compute()
        except BaseException:
            self.release_or_skip(partition, lease_id)
            raise
        if not no_store:
            self.store_or_skip(
                partition, query, value, embedding=embedding, ttl_seconds=ttl_seconds, metadata=tagged_metadata(metadata, value),
                cost=cost, key=key, lease_id=lease_id,
            )
        if found is not None:  # after the Store: an alias the judge makes replaces the fresh entry
            check = miss_check(found, query, value, judge is not None and not no_store, key, embedding)
            self.audits.miss(partition, check, same, judge)
        return value
