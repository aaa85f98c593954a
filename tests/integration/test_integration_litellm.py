"""The LiteLLM hook: real litellm (its OpenAI provider) against a local fake OpenAI server."""

from __future__ import annotations

import asyncio
import os

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch from the internet at import
litellm = pytest.importorskip("litellm")

from semcache_server.client import Client  # noqa: E402
from semcache_server.integrations.litellm import enable  # noqa: E402
from tests.fake_openai import fake_openai  # noqa: E402
from tests.helpers import free_port  # noqa: E402

SYSTEM = {"role": "system", "content": "You are a support agent."}


@pytest.fixture
def llm_server():
    with fake_openai() as server:
        yield server
    litellm.cache = None


def complete(server, text, **settings):
    return litellm.completion(
        model="openai/gpt-x", api_base=server.base_url, api_key="test",
        messages=[SYSTEM, {"role": "user", "content": text}], **settings,
    )


def test_paraphrase_hits_within_one_scope_only(make_server, embedder, llm_server):
    _, client = make_server(embedder=embedder)
    enable(client, namespace="lite")
    first = complete(llm_server, "How do I reset my password?", temperature=0)
    again = complete(llm_server, "How can I reset my password?", temperature=0)
    assert llm_server.calls == 1
    assert again.choices[0].message.content == first.choices[0].message.content
    complete(llm_server, "How do I reset my password?", temperature=0.9)
    tools = [{"type": "function", "function": {"name": "reset", "parameters": {"type": "object", "properties": {}}}}]
    complete(llm_server, "How do I reset my password?", temperature=0, tools=tools)
    assert llm_server.calls == 3
    assert client.stats().hits == 1


def test_async_completion_is_cached(make_server, embedder, llm_server):
    _, client = make_server(embedder=embedder)
    enable(client, namespace="lite")

    async def scenario():
        messages = [SYSTEM, {"role": "user", "content": "What are your opening hours?"}]
        kwargs = {"model": "openai/gpt-x", "api_base": llm_server.base_url, "api_key": "test", "messages": messages}
        first = await litellm.acompletion(**kwargs)
        for _ in range(50):  # litellm stores asynchronously after the call returns
            if client.stats().entries:
                break
            await asyncio.sleep(0.05)
        same = [SYSTEM, {"role": "user", "content": "what are your opening hours"}]  # the exact tier, after normalizing
        second = await litellm.acompletion(**{**kwargs, "messages": same})
        await litellm.close_litellm_async_clients()  # its cached HTTP clients, inside this event loop
        return first, second

    first, second = asyncio.run(scenario())
    assert llm_server.calls == 1 and client.stats().entries == 1
    assert second.choices[0].message.content == first.choices[0].message.content
    assert complete(llm_server, "What are your opening hours?").choices[0].message.content == first.choices[0].message.content
    assert llm_server.calls == 1


def test_a_cache_outage_calls_the_model(llm_server):
    with Client(f"127.0.0.1:{free_port()}", timeout_seconds=1) as down:
        enable(down)
        answer = complete(llm_server, "Is the cache down?")
    assert answer.choices[0].message.content.startswith("answer 1") and llm_server.calls == 1
