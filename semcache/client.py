"""A thin Python client over the gRPC API."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc

Partition = pb.Partition
# Codes that mean "the cache cannot answer now", not "the request is wrong": get_or_compute
# treats them as a miss, so a busy, slow or restarting cache never fails the application.
CACHE_UNAVAILABLE_CODES = frozenset({
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
})
PartitionLike = pb.Partition | Mapping[str, str] | None


def as_partition(partition: PartitionLike) -> pb.Partition:
    """A Partition from a message, a dict of its fields, or None (the default partition)."""
    if partition is None:
        return pb.Partition()
    if isinstance(partition, pb.Partition):
        return partition
    return pb.Partition(**partition)


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
        if channel is None:
            if root_certificates is not None:
                credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
                channel = grpc.secure_channel(address, credentials)
            else:
                channel = grpc.insecure_channel(address)
        self._channel = channel
        self._stub = pb_grpc.SemanticCacheStub(channel)
        self._timeout_seconds = timeout_seconds
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        return method(request, timeout=self._timeout_seconds, metadata=self._metadata)

    def lookup(
        self,
        partition: PartitionLike,
        query: str,
        *,
        embedding: Sequence[float] | None = None,
        min_similarity: float | None = None,
        verifier_band_low: float | None = None,
        verifier_min_score: float | None = None,
    ) -> pb.LookupResponse:
        """None leaves a setting to the namespace and server (see LookupRequest)."""
        request = pb.LookupRequest(partition=as_partition(partition), query=query, embedding=embedding or [])
        if min_similarity is not None:
            request.min_similarity = min_similarity
        if verifier_band_low is not None:
            request.verifier_band_low = verifier_band_low
        if verifier_min_score is not None:
            request.verifier_min_score = verifier_min_score
        return self._call(self._stub.Lookup, request)

    def store(
        self,
        partition: PartitionLike,
        query: str,
        response: bytes | str,
        *,
        embedding: Sequence[float] | None = None,
        ttl_seconds: int = 0,
        metadata: Mapping[str, str] | None = None,
        cost: float = 0.0,
    ) -> pb.StoreResponse:
        if isinstance(response, str):
            response = response.encode("utf-8")
        request = pb.StoreRequest(
            partition=as_partition(partition),
            query=query,
            response=response,
            embedding=embedding or [],
            ttl_seconds=ttl_seconds,
            metadata=metadata or {},
            cost=cost,
        )
        return self._call(self._stub.Store, request)

    def store_batch(self, items: Sequence[Mapping[str, Any]]) -> pb.StoreBatchResponse:
        """Store many entries in one call. Each item is a dict of StoreRequest fields
        (partition may be a dict); results come back in order, each stored or failed alone."""
        requests = []
        for item in items:
            fields = dict(item)
            fields["partition"] = as_partition(fields.get("partition"))
            if isinstance(fields.get("response"), str):
                fields["response"] = fields["response"].encode("utf-8")
            requests.append(pb.StoreRequest(**fields))
        return self._call(self._stub.StoreBatch, pb.StoreBatchRequest(items=requests))

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
    ) -> str | bytes:
        """The cached response when one matches; otherwise compute(), stored, then returned.

        A str from compute is stored as UTF-8 and a hit is returned as str; bytes stay bytes.
        When the cache cannot answer now (CACHE_UNAVAILABLE_CODES: overloaded, past the
        timeout, not running), the Lookup counts as a miss and a failed Store is skipped:
        compute()'s value is returned all the same. Other errors (a bad request, a
        refused token) are raised.
        """
        try:
            found = self.lookup(partition, query, min_similarity=min_similarity)
        except grpc.RpcError as e:
            if e.code() not in CACHE_UNAVAILABLE_CODES:
                raise
            found = None
        if found is not None and found.hit:
            return found.response.decode("utf-8") if found.metadata.get("semcache.encoding") == "utf-8" else found.response
        value = compute()
        tagged = dict(metadata or {})
        if isinstance(value, str):
            tagged["semcache.encoding"] = "utf-8"
        try:
            self.store(partition, query, value, ttl_seconds=ttl_seconds, metadata=tagged, cost=cost)
        except grpc.RpcError as e:
            if e.code() not in CACHE_UNAVAILABLE_CODES:
                raise
        return value
