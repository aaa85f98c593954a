"""Streaming: pass an LLM stream through to the caller while accumulating it, and store
it only when it completes normally. A stream that fails, is closed early by its
consumer, or is cancelled stores nothing, and the lease it held is released.

    for piece in cached_stream(cache, partition, question, lambda: llm_stream(question)):
        print(piece, end="")

A hit is replayed as one chunk (the adapters in semcache_server.integrations replay hits in
their SDK's chunk type).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, TypeVar

from semcache_server.aio_client import AsyncClient
from semcache_server.client import Client
from semcache_server.client_requests import PartitionLike, cached_value

Chunk = TypeVar("Chunk")


def stream_through(
    chunks: Iterable[Chunk], on_complete: Callable[[list[Chunk]], None], on_abort: Callable[[], None] | None = None,
) -> Iterator[Chunk]:
    """Every chunk, in order; on_complete(all of them) once the stream ended normally,
    on_abort() when it raised or its consumer stopped early (GeneratorExit)."""
    seen: list[Chunk] = []
    completed = False
    try:
        for chunk in chunks:
            seen.append(chunk)
            yield chunk
        completed = True
    finally:
        if not completed and on_abort is not None:
            on_abort()
    on_complete(seen)


async def astream_through(
    chunks: AsyncIterable[Chunk], on_complete: Callable[[list[Chunk]], Any], on_abort: Callable[[], Any] | None = None,
) -> AsyncIterator[Chunk]:
    """stream_through for async streams; the callbacks may be coroutine functions."""
    seen: list[Chunk] = []
    completed = False
    try:
        async for chunk in chunks:
            seen.append(chunk)
            yield chunk
        completed = True
    finally:
        if not completed and on_abort is not None:
            await _maybe_await(on_abort())
    await _maybe_await(on_complete(seen))


async def _maybe_await(value: Any) -> None:
    if hasattr(value, "__await__"):
        await value


def cached_stream(
    cache: Client, partition: PartitionLike, query: str, start_stream: Callable[[], Iterable[str]], **options: Any,
) -> Iterator[str]:
    """The cached answer as one chunk, or the LLM's stream (start_stream()) passed through
    and stored once complete. options: key, embedding, min_similarity, ttl_seconds,
    metadata, cost, no_store, max_age_seconds, refresh (as in get_or_compute)."""
    lookup_options, store_options, no_store = _split(options)
    found = cache.lookup_or_none(partition, query, lease=not no_store, **lookup_options)
    if found is not None and found.hit:
        yield str(cached_value(found))
        return
    lease_id = found.lease_id if found is not None else ""

    def store(chunks: list[str]) -> None:
        if not no_store:
            cache.store_or_skip(partition, query, "".join(chunks), lease_id=lease_id, **store_options)

    yield from stream_through(start_stream(), store, lambda: cache.release_or_skip(partition, lease_id))


async def acached_stream(
    cache: AsyncClient, partition: PartitionLike, query: str, start_stream: Callable[[], AsyncIterable[str]],
    **options: Any,
) -> AsyncIterator[str]:
    """cached_stream for the asyncio client and an async LLM stream."""
    lookup_options, store_options, no_store = _split(options)
    found = await cache.lookup_or_none(partition, query, lease=not no_store, **lookup_options)
    if found is not None and found.hit:
        yield str(cached_value(found))
        return
    lease_id = found.lease_id if found is not None else ""

    async def store(chunks: list[str]) -> None:
        if not no_store:
            await cache.store_or_skip(partition, query, "".join(chunks), lease_id=lease_id, **store_options)

    async for chunk in astream_through(start_stream(), store, lambda: cache.release_or_skip(partition, lease_id)):
        yield chunk


_LOOKUP_ONLY = ("min_similarity", "max_age_seconds", "refresh", "lease_wait_ms")
_STORE_ONLY = ("ttl_seconds", "metadata", "cost")


def _split(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], bool]:
    no_store = bool(options.pop("no_store", False))
    lookup = {k: v for k, v in options.items() if k not in _STORE_ONLY}
    store = {k: v for k, v in options.items() if k not in _LOOKUP_ONLY}
    metadata = dict(store.get("metadata") or {})
    metadata["semcache.encoding"] = "utf-8"
    store["metadata"] = metadata
    lookup["no_store"] = no_store
    return lookup, store, no_store
