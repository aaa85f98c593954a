"""The asyncio client and the streaming helpers against a real server."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from semcache_server.aio_client import AsyncClient
from semcache_server.client import Client
from semcache_server.streaming import acached_stream, cached_stream
from tests.helpers import free_port, unit_vector

APP = {"namespace": "app", "model": "gpt-x"}


def test_async_client_has_the_sync_api(make_server):
    server, sync_client = make_server(embedder=None)
    vector = unit_vector(1)

    async def scenario() -> None:
        async with AsyncClient(f"127.0.0.1:{server.port}") as cache:
            stored = await cache.store(APP, "q", "a", embedding=vector, key={"settings": {"seed": 1}})
            found = await cache.lookup(APP, "q", embedding=vector, key={"settings": {"seed": 1}})
            assert found.hit and found.entry_id == stored.entry_id
            assert not (await cache.lookup(APP, "q", embedding=vector)).hit
            calls = []

            async def compute() -> str:
                calls.append(1)
                await asyncio.sleep(0.3)
                return "computed"

            results = await asyncio.gather(*[
                cache.get_or_compute(APP, "new question", compute, embedding=unit_vector(2)) for _ in range(16)
            ])
            assert results == ["computed"] * 16 and calls == [1]
            assert (await cache.stats()).entries == 2
            assert await cache.delete(APP, stored.entry_id)
            assert await cache.invalidate(APP) == 1
            assert await cache.set_namespace_threshold("app", 0.8) == pytest.approx(0.8)

    asyncio.run(scenario())
    assert sync_client.stats().entries == 0


def test_async_get_or_compute_degrades_to_the_model_when_the_cache_is_down():
    async def scenario() -> str:
        async with AsyncClient(f"127.0.0.1:{free_port()}", timeout_seconds=1) as cache:
            async def compute() -> str:
                return "from the model"
            return str(await cache.get_or_compute(APP, "q", compute))

    assert asyncio.run(scenario()) == "from the model"


def _llm_stream(pieces, fail_after=None):
    def start():
        for i, piece in enumerate(pieces):
            if fail_after is not None and i == fail_after:
                raise ConnectionError("the stream broke")
            yield piece
    return start


def test_a_completed_stream_is_stored_once_and_replayed(make_server):
    _, client = make_server(embedder=None)
    vector = unit_vector(3)
    pieces = ["The ", "answer ", "is 42."]
    assert list(cached_stream(client, APP, "q", _llm_stream(pieces), embedding=vector)) == pieces
    assert client.stats().entries == 1
    assert list(cached_stream(client, APP, "q", _llm_stream(["never"]), embedding=vector)) == ["The answer is 42."]


def test_failed_or_abandoned_streams_store_nothing_and_release_the_lease(make_server):
    _, client = make_server(embedder=None)
    vector = unit_vector(4)
    with pytest.raises(ConnectionError):
        list(cached_stream(client, APP, "q", _llm_stream(["a", "b", "c"], fail_after=2), embedding=vector))
    stream = cached_stream(client, APP, "q", _llm_stream(["a", "b", "c"]), embedding=vector)
    assert next(stream) == "a"
    stream.close()  # the consumer stopped reading
    assert client.stats().entries == 0
    # Both leases were released: the next leased miss is not made to wait.
    found = client.lookup(APP, "q", embedding=vector, lease=True, lease_wait_ms=10_000)
    assert found.lease_id and found.waited_ms == 0


def test_async_stream_is_stored_on_completion_only(make_server):
    server, client = make_server(embedder=None)
    vector = unit_vector(5)

    async def llm(pieces, fail=False):
        for piece in pieces:
            await asyncio.sleep(0)
            yield piece
        if fail:
            raise ConnectionError("cut")

    async def scenario() -> None:
        async with AsyncClient(f"127.0.0.1:{server.port}") as cache:
            with pytest.raises(ConnectionError):
                async for _ in acached_stream(cache, APP, "q", lambda: llm(["x", "y"], fail=True), embedding=vector):
                    pass
            assert (await cache.stats()).entries == 0
            got = [c async for c in acached_stream(cache, APP, "q", lambda: llm(["x", "y"]), embedding=vector)]
            assert got == ["x", "y"]
            replay = [c async for c in acached_stream(cache, APP, "q", lambda: llm(["z"]), embedding=vector)]
            assert replay == ["xy"]

    asyncio.run(scenario())
    assert client.stats().entries == 1


def test_sync_client_errors_that_are_the_callers_are_raised(make_server):
    _, client = make_server(embedder=None)
    with pytest.raises(grpc.RpcError) as raised:
        client.get_or_compute(APP, "q", lambda: "a", embedding=[1.0, 2.0])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with Client(f"127.0.0.1:{free_port()}", timeout_seconds=1) as down:
        assert down.get_or_compute(APP, "q", lambda: "model") == "model"
