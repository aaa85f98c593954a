"""The OpenAI Python SDK, served from the cache:

    from openai import OpenAI
    from semcache_server import Client
    from semcache_server.integrations.openai import cached

    llm = cached(OpenAI(), Client("127.0.0.1:50051"), namespace="support")
    llm.chat.completions.create(model="gpt-4o-mini", messages=[...])            # cached
    for chunk in llm.chat.completions.create(..., stream=True): ...             # streamed, cached once complete

AsyncOpenAI with semcache_server.aio_client.AsyncClient works the same way, awaited.

The key is the whole request (semcache_server.integrations.chat): model and leading system
messages (the partition), the last user message (the query), the other settings and
tools and the earlier turns (the request key). A paraphrase hits; a changed setting,
tool or earlier turn misses. A hit comes back as the SDK's ChatCompletion, or with
stream=True as ChatCompletionChunk objects. A completion is stored only when every
choice finished normally (stop, tool_calls, length), a stream only once it completed.
Concurrent identical misses call the model once (leases). The saved cost is counted
in tokens (usage.total_tokens). A cache that is down or refuses a call never fails
it: the call goes to the model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from semcache_server.aio_client import AsyncClient
from semcache_server.client import Client
from semcache_server.integrations.chat import FORMAT_KEY, ChatRequest, cache_trouble, chat_request
from semcache_server.streaming import astream_through, stream_through
from semcache_server.v1 import semcache_pb2 as pb

FORMAT = "openai.chat.completion"
STORED_FINISH_REASONS = frozenset({"stop", "tool_calls", "length", "function_call"})


def cached(client: Any, cache: Client | AsyncClient, *, namespace: str = "default", **options: Any) -> Any:
    """The client with chat.completions.create served from the cache; everything else
    passes through. options: ttl_seconds, min_similarity, lease_wait_ms."""
    return _Cached(client, cache, namespace, options)


class _Passthrough:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Chat(_Passthrough):
    def __init__(self, chat: Any, completions: Any) -> None:
        super().__init__(chat)
        self.completions = completions


class _Cached(_Passthrough):
    def __init__(self, client: Any, cache: Client | AsyncClient, namespace: str, options: dict[str, Any]) -> None:
        super().__init__(client)
        completions: _Completions | _AsyncCompletions
        if isinstance(cache, AsyncClient):
            completions = _AsyncCompletions(client.chat.completions, cache, namespace, options)
        else:
            completions = _Completions(client.chat.completions, cache, namespace, options)
        self.chat = _Chat(client.chat, completions)


def decode(found: pb.LookupResponse | None) -> ChatCompletion | None:
    """A hit's ChatCompletion; None on a miss or for an entry stored in another format."""
    if found is None or not found.hit or found.metadata.get(FORMAT_KEY) != FORMAT:
        return None
    try:
        return ChatCompletion.model_validate_json(found.response)
    except ValueError:
        return None


def storable(completion: ChatCompletion) -> bool:
    return bool(completion.choices) and all(c.finish_reason in STORED_FINISH_REASONS for c in completion.choices)


def lookup_arguments(request: ChatRequest, options: dict[str, Any]) -> dict[str, Any]:
    return {
        "partition": request.partition, "query": request.query, "key": request.key, "lease": True,
        "min_similarity": options.get("min_similarity"), "lease_wait_ms": options.get("lease_wait_ms"),
    }


def store_arguments(request: ChatRequest, completion: ChatCompletion, lease_id: str, options: dict[str, Any]) -> dict[str, Any]:
    usage = completion.usage.total_tokens if completion.usage is not None else 0
    return {
        "partition": request.partition, "query": request.query, "response": completion.model_dump_json(),
        "key": request.key, "lease_id": lease_id, "metadata": {FORMAT_KEY: FORMAT}, "cost": float(usage),
        "ttl_seconds": options.get("ttl_seconds", 0),
    }


def assemble(chunks: list[ChatCompletionChunk]) -> ChatCompletion | None:
    """The completion a finished stream amounts to; None when a choice never finished."""
    if not chunks:
        return None
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in chunks:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            entry = choices.setdefault(choice.index, {"role": "assistant", "content": "", "calls": {}, "finish_reason": None})
            delta = choice.delta
            entry["role"] = delta.role or entry["role"]
            entry["content"] += delta.content or ""
            for call in delta.tool_calls or []:
                merged = entry["calls"].setdefault(call.index, {"id": "", "type": "function", "name": "", "arguments": ""})
                merged["id"] = call.id or merged["id"]
                if call.function is not None:
                    merged["name"] += call.function.name or ""
                    merged["arguments"] += call.function.arguments or ""
            entry["finish_reason"] = choice.finish_reason or entry["finish_reason"]
    if not choices or any(e["finish_reason"] is None for e in choices.values()):
        return None
    first = chunks[0]
    return ChatCompletion.model_validate({
        "id": first.id, "object": "chat.completion", "created": first.created, "model": first.model,
        "usage": usage.model_dump() if usage is not None else None,
        "choices": [
            {
                "index": index, "finish_reason": e["finish_reason"],
                "message": {
                    "role": e["role"], "content": e["content"] or None,
                    "tool_calls": [
                        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                        for _, c in sorted(e["calls"].items())
                    ] or None,
                },
            }
            for index, e in sorted(choices.items())
        ],
    })


def replay(completion: ChatCompletion) -> list[ChatCompletionChunk]:
    """A stored completion as the chunks of a stream: per choice its message, then its finish."""
    chunks = []
    for choice in completion.choices:
        message = choice.message
        calls = [
            {"index": i, "id": c.id, "type": "function", "function": c.function.model_dump()}
            for i, c in enumerate(message.tool_calls or []) if hasattr(c, "function")
        ]
        delta: dict[str, Any] = {"role": "assistant", "content": message.content}
        if calls:
            delta["tool_calls"] = calls
        for body, finish in ((delta, None), ({}, choice.finish_reason)):
            chunks.append(ChatCompletionChunk.model_validate({
                "id": completion.id, "object": "chat.completion.chunk", "created": completion.created,
                "model": completion.model, "choices": [{"index": choice.index, "delta": body, "finish_reason": finish}],
            }))
    return chunks


class ChunkStream:
    """A stream of chunks as the SDK's Stream is used: iterated, closed, or a context manager."""

    def __init__(self, chunks: Iterator[Any]) -> None:
        self._chunks = chunks

    def __iter__(self) -> ChunkStream:
        return self

    def __next__(self) -> Any:
        return next(self._chunks)

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> ChunkStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncChunkStream:
    """The async counterpart of ChunkStream."""

    def __init__(self, chunks: AsyncIterator[Any]) -> None:
        self._chunks = chunks

    def __aiter__(self) -> AsyncChunkStream:
        return self

    async def __anext__(self) -> Any:
        return await self._chunks.__anext__()

    async def close(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> AsyncChunkStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _Completions(_Passthrough):
    def __init__(self, completions: Any, cache: Client, namespace: str, options: dict[str, Any]) -> None:
        super().__init__(completions)
        self._cache, self._namespace, self._options = cache, namespace, options

    def create(self, **kwargs: Any) -> Any:
        request = chat_request(self._namespace, str(kwargs.get("model", "")), kwargs.get("messages", []), kwargs)
        if request is None:
            return self._inner.create(**kwargs)
        found = self._lookup(request)
        hit = decode(found)
        streamed = bool(kwargs.get("stream"))
        if hit is not None:
            return ChunkStream(iter(replay(hit))) if streamed else hit
        lease_id = found.lease_id if found is not None else ""
        try:
            result = self._inner.create(**kwargs)
        except BaseException:
            self._release(request, lease_id)
            raise
        if not streamed:
            self._store(request, result, lease_id)
            return result

        def completed(chunks: list[ChatCompletionChunk]) -> None:
            self._store(request, assemble(chunks), lease_id)

        return ChunkStream(stream_through(result, completed, lambda: self._release(request, lease_id)))

    def _lookup(self, request: ChatRequest) -> pb.LookupResponse | None:
        try:
            return self._cache.lookup(**lookup_arguments(request, self._options))
        except Exception as e:
            if not cache_trouble(e):
                raise
            return None

    def _store(self, request: ChatRequest, completion: ChatCompletion | None, lease_id: str) -> None:
        if completion is None or not storable(completion):
            self._release(request, lease_id)
            return
        try:
            self._cache.store(**store_arguments(request, completion, lease_id, self._options))
        except Exception as e:
            if not cache_trouble(e):
                raise

    def _release(self, request: ChatRequest, lease_id: str) -> None:
        self._cache.release_or_skip(request.partition, lease_id)


class _AsyncCompletions(_Passthrough):
    def __init__(self, completions: Any, cache: AsyncClient, namespace: str, options: dict[str, Any]) -> None:
        super().__init__(completions)
        self._cache, self._namespace, self._options = cache, namespace, options

    async def create(self, **kwargs: Any) -> Any:
        request = chat_request(self._namespace, str(kwargs.get("model", "")), kwargs.get("messages", []), kwargs)
        if request is None:
            return await self._inner.create(**kwargs)
        found = await self._lookup(request)
        hit = decode(found)
        streamed = bool(kwargs.get("stream"))
        if hit is not None:
            return AsyncChunkStream(_aiter(replay(hit))) if streamed else hit
        lease_id = found.lease_id if found is not None else ""
        try:
            result = await self._inner.create(**kwargs)
        except BaseException:
            await self._release(request, lease_id)
            raise
        if not streamed:
            await self._store(request, result, lease_id)
            return result

        async def completed(chunks: list[ChatCompletionChunk]) -> None:
            await self._store(request, assemble(chunks), lease_id)

        return AsyncChunkStream(astream_through(result, completed, lambda: self._release(request, lease_id)))

    async def _lookup(self, request: ChatRequest) -> pb.LookupResponse | None:
        try:
            return await self._cache.lookup(**lookup_arguments(request, self._options))
        except Exception as e:
            if not cache_trouble(e):
                raise
            return None

    async def _store(self, request: ChatRequest, completion: ChatCompletion | None, lease_id: str) -> None:
        if completion is None or not storable(completion):
            await self._release(request, lease_id)
            return
        try:
            await self._cache.store(**store_arguments(request, completion, lease_id, self._options))
        except Exception as e:
            if not cache_trouble(e):
                raise

    async def _release(self, request: ChatRequest, lease_id: str) -> None:
        await self._cache.release_or_skip(request.partition, lease_id)


async def _aiter(chunks: list[Any]) -> AsyncIterator[Any]:
    for chunk in chunks:
        yield chunk
