"""The OpenAI SDK adapter: the real openai library against a local fake OpenAI server."""

from __future__ import annotations

import asyncio

import pytest

openai = pytest.importorskip("openai")

from semcache_server.aio_client import AsyncClient  # noqa: E402
from semcache_server.client import Client  # noqa: E402
from semcache_server.integrations.openai import cached  # noqa: E402
from tests.fake_openai import fake_openai  # noqa: E402
from tests.helpers import free_port  # noqa: E402

SYSTEM = {"role": "system", "content": "You are a support agent."}


def ask(text, *history):
    return [SYSTEM, *history, {"role": "user", "content": text}]


@pytest.fixture
def llm_server():
    with fake_openai() as server:
        yield server


@pytest.fixture
def served(make_server, embedder, llm_server):
    _, client = make_server(embedder=embedder)
    llm = cached(openai.OpenAI(base_url=llm_server.base_url, api_key="test", max_retries=0), client, namespace="support")
    return llm, client, llm_server


def test_a_paraphrase_is_served_without_a_call(served):
    llm, client, fake = served
    first = llm.chat.completions.create(model="gpt-x", messages=ask("How do I reset my password?"), temperature=0)
    again = llm.chat.completions.create(model="gpt-x", messages=ask("How can I reset my password?"), temperature=0)
    assert fake.calls == 1
    assert isinstance(again, openai.types.chat.ChatCompletion)
    assert again.choices[0].message.content == first.choices[0].message.content
    stats = client.stats()
    assert stats.hits == 1 and stats.saved_cost == pytest.approx(12.0)  # counted in tokens


def test_a_changed_setting_tool_model_or_turn_misses(served):
    llm, _, fake = served
    tools = [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object", "properties": {}}}}]
    base = {"model": "gpt-x", "messages": ask("Where is my order?"), "temperature": 0, "tools": tools}
    llm.chat.completions.create(**base)
    llm.chat.completions.create(**base)
    assert fake.calls == 1
    other_tools = [{"type": "function", "function": {"name": "cancel_order", "parameters": {"type": "object", "properties": {}}}}]
    for changed in (
        {"temperature": 0.9}, {"tools": other_tools}, {"model": "gpt-y"}, {"response_format": {"type": "json_object"}},
        {"messages": ask("Where is my order?", {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"})},
        {"messages": [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Where is my order?"}]},
    ):
        before = fake.calls
        llm.chat.completions.create(**{**base, **changed})
        assert fake.calls == before + 1, changed


def test_a_stream_is_passed_through_stored_once_complete_and_replayed(served):
    llm, client, fake = served
    stream = llm.chat.completions.create(model="gpt-x", messages=ask("What are your opening hours?"), stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == "answer 1 to: What are your opening hours?"
    assert len(pieces) > 3  # passed through chunk by chunk
    assert client.stats().entries == 1
    replayed = llm.chat.completions.create(model="gpt-x", messages=ask("What are your opening hours?"), stream=True)
    chunks = list(replayed)
    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "answer 1 to: What are your opening hours?"
    assert chunks[-1].choices[0].finish_reason == "stop"
    plain = llm.chat.completions.create(model="gpt-x", messages=ask("What are your opening hours?"))
    assert plain.choices[0].message.content == "answer 1 to: What are your opening hours?"
    assert fake.calls == 1


def test_a_broken_or_abandoned_stream_is_not_stored(served):
    llm, client, fake = served
    fake.fail_stream_after = 2
    with pytest.raises(Exception):  # noqa: B017 (whatever the SDK raises for a broken stream)
        for _ in llm.chat.completions.create(model="gpt-x", messages=ask("Do you ship abroad?"), stream=True):
            pass
    fake.fail_stream_after = None
    with llm.chat.completions.create(model="gpt-x", messages=ask("Do you ship abroad?"), stream=True) as stream:
        next(iter(stream))  # the reader stops after one chunk
    assert client.stats().entries == 0
    llm.chat.completions.create(model="gpt-x", messages=ask("Do you ship abroad?"))
    assert fake.calls == 3 and client.stats().entries == 1


def test_a_cache_outage_degrades_to_calling_the_model(llm_server):
    with Client(f"127.0.0.1:{free_port()}", timeout_seconds=1) as down:
        llm = cached(openai.OpenAI(base_url=llm_server.base_url, api_key="test", max_retries=0), down)
        answer = llm.chat.completions.create(model="gpt-x", messages=ask("Is the cache down?"))
        streamed = list(llm.chat.completions.create(model="gpt-x", messages=ask("Is the cache down?"), stream=True))
    assert answer.choices[0].message.content.startswith("answer 1")
    assert streamed and llm_server.calls == 2


def test_uncacheable_requests_pass_through(served):
    llm, client, fake = served
    tool_turn = [
        SYSTEM, {"role": "user", "content": "Where is order 7?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "lookup_order", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "shipped"},
    ]
    llm.chat.completions.create(model="gpt-x", messages=tool_turn)
    llm.chat.completions.create(model="gpt-x", messages=tool_turn)
    assert fake.calls == 2 and client.stats().lookups == 0
    assert llm.models is not None  # the rest of the client passes through


def test_async_openai_is_served_from_the_cache(make_server, embedder, llm_server):
    server, client = make_server(embedder=embedder)

    async def scenario() -> None:
        async with AsyncClient(f"127.0.0.1:{server.port}") as cache:
            llm = cached(openai.AsyncOpenAI(base_url=llm_server.base_url, api_key="test", max_retries=0), cache)
            llm_server.delay_seconds = 0.3
            answers = await asyncio.gather(*[
                llm.chat.completions.create(model="gpt-x", messages=ask("How do I close my account?")) for _ in range(8)
            ])
            assert {a.choices[0].message.content for a in answers} == {"answer 1 to: How do I close my account?"}
            llm_server.delay_seconds = 0.0
            stream = await llm.chat.completions.create(model="gpt-x", messages=ask("How can I close my account?"), stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream])
            assert text == "answer 1 to: How do I close my account?"
            fresh = await llm.chat.completions.create(model="gpt-x", messages=ask("What is the weather today?"), stream=True)
            assert "".join([c.choices[0].delta.content or "" async for c in fresh if c.choices]).startswith("answer 2")
            await llm.close()  # the AsyncOpenAI client, passed through

    asyncio.run(scenario())
    assert llm_server.calls == 2  # 8 concurrent identical misses: one call; the paraphrased stream: none
    assert client.stats().entries == 2
