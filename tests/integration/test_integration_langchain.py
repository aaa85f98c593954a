"""The LangChain cache: real langchain (ChatOpenAI) against a local fake OpenAI server."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")
langchain_openai = pytest.importorskip("langchain_openai")

from langchain_core.globals import set_llm_cache  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage  # noqa: E402

from semcache_server.client import Client  # noqa: E402
from semcache_server.integrations.langchain import SemcacheCache  # noqa: E402
from tests.fake_openai import fake_openai  # noqa: E402
from tests.helpers import free_port  # noqa: E402


@pytest.fixture
def llm_server():
    with fake_openai() as server:
        yield server


@pytest.fixture
def chat(llm_server):
    def make(**settings):
        return langchain_openai.ChatOpenAI(
            model="gpt-x", base_url=llm_server.base_url, api_key="test", max_retries=0, **settings
        )
    yield make
    set_llm_cache(None)


def test_paraphrase_hits_and_a_changed_setting_misses(make_server, embedder, llm_server, chat):
    _, client = make_server(embedder=embedder)
    set_llm_cache(SemcacheCache(client, namespace="lc"))
    system = SystemMessage("You are a support agent.")
    first = chat(temperature=0).invoke([system, HumanMessage("How do I reset my password?")])
    again = chat(temperature=0).invoke([system, HumanMessage("How can I reset my password?")])
    assert llm_server.calls == 1 and again.content == first.content
    chat(temperature=0.7).invoke([system, HumanMessage("How do I reset my password?")])
    assert llm_server.calls == 2
    history = [system, HumanMessage("hi"), AIMessage("hello"), HumanMessage("How do I reset my password?")]
    chat(temperature=0).invoke(history)
    assert llm_server.calls == 3
    stats = client.stats()
    assert stats.hits == 1 and stats.entries == 3


def test_clear_empties_the_namespace_and_an_outage_calls_the_model(make_server, llm_server, chat):
    _, client = make_server(embedder=None)
    cache = SemcacheCache(client, namespace="lc")
    assert cache.lookup("q", "llm") is None  # a text-only Lookup on a server without a model: a miss
    cache.clear()
    with Client(f"127.0.0.1:{free_port()}", timeout_seconds=1) as down:
        set_llm_cache(SemcacheCache(down))
        assert chat().invoke("Is the cache down?").content.startswith("answer 1")
    assert llm_server.calls == 1
