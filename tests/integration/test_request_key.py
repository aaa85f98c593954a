"""The whole cache key over gRPC: settings, tools and conversation context isolate
entries; cache control (no_store, refresh, max_age_seconds) per request."""

from __future__ import annotations

import grpc
import pytest

from semcache_server.client import request_key
from semcache_server.settings import NamespaceSettings
from tests.helpers import ManualClock, status_of, unit_vector, vector_at_similarity

APP = {"namespace": "app", "model": "gpt-x"}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.fixture
def policy_server(make_server):
    clock = ManualClock()
    server, client = make_server(embedder=None, clock=clock, min_similarity=0.9)
    return server, client, clock


def test_same_question_with_other_settings_tools_or_format_misses(policy_server):
    _, client, _ = policy_server
    vector = unit_vector(1)
    key = request_key({"temperature": 0, "tools": TOOLS, "response_format": {"type": "text"}})
    client.store(APP, "weather in Boston?", "sunny", embedding=vector, key=key)
    assert client.lookup(APP, "weather in Boston?", embedding=vector, key=key).exact
    paraphrase = vector_at_similarity(vector, 0.95, seed=2)
    assert client.lookup(APP, "Boston weather?", embedding=paraphrase, key=key).hit
    other_tools = [dict(TOOLS[0], function={"name": "get_hotels", "parameters": {"type": "object"}})]
    for changed in (
        {"temperature": 0.7, "tools": TOOLS, "response_format": {"type": "text"}},
        {"temperature": 0, "tools": other_tools, "response_format": {"type": "text"}},
        {"temperature": 0, "tools": TOOLS, "response_format": {"type": "json_object"}},
        {"temperature": 0, "tools": TOOLS},
    ):
        for query, embedding in (("weather in Boston?", vector), ("Boston weather?", paraphrase)):
            found = client.lookup(APP, query, embedding=embedding, key=request_key(changed))
            assert not found.hit, (changed, query)
    assert not client.lookup(APP, "weather in Boston?", embedding=vector).hit  # no key is a key of its own


def test_ignored_settings_and_spelling_do_not_split_the_cache(policy_server):
    _, client, _ = policy_server
    vector = unit_vector(3)
    client.store(APP, "q", "a", embedding=vector, key=request_key({"temperature": 0.0, "stream": False}))
    found = client.lookup(APP, "q", embedding=vector, key={"settings": {"temperature": 0, "stream": True, "user": "u7"}})
    assert found.hit and found.exact


def test_a_store_replaces_only_the_entry_of_its_own_key(policy_server):
    _, client, _ = policy_server
    vector = unit_vector(4)
    cold = request_key({"temperature": 0})
    warm = request_key({"temperature": 1})
    client.store(APP, "q", "cold answer", embedding=vector, key=cold)
    assert not client.store(APP, "q", "warm answer", embedding=vector, key=warm).replaced
    assert client.lookup(APP, "q", embedding=vector, key=cold).response == b"cold answer"
    assert client.lookup(APP, "q", embedding=vector, key=warm).response == b"warm answer"
    assert client.store(APP, "q", "cold again", embedding=vector, key=cold).replaced


def test_and_in_paris_after_weather_never_gets_the_hotels_answer(make_server, embedder):
    """The failure the field reports: a follow-up answered from another conversation."""
    _, client = make_server(embedder=embedder, min_similarity=0.85)
    weather = [{"role": "user", "content": "What's the weather in London?"}, {"role": "assistant", "content": "Rainy, 12C."}]
    hotels = [{"role": "user", "content": "Recommend a hotel in London"}, {"role": "assistant", "content": "The Savoy."}]
    client.store(APP, "And in Paris?", "Paris: sunny, 18C.", key={"context": weather})
    found = client.lookup(APP, "And in Paris?", key={"context": hotels})
    assert not found.hit
    found = client.lookup(APP, "And what about Paris?", key={"context": hotels})
    assert not found.hit
    assert client.lookup(APP, "And in Paris?", key={"context": weather}).hit
    assert not client.lookup(APP, "And in Paris?").hit  # a first turn is another conversation


def test_semantic_context_matches_a_paraphrased_previous_turn_only(make_server, embedder):
    namespaces = {"app": NamespaceSettings(context_match="semantic", context_min_similarity=0.8)}
    _, client = make_server(embedder=embedder, min_similarity=0.85, namespaces=namespaces)
    weather = [{"role": "user", "content": "What's the weather in London?"}, {"role": "assistant", "content": "Rainy."}]
    client.store(APP, "And in Paris?", "Paris: sunny.", key={"context": weather})
    paraphrased = [{"role": "user", "content": "what is the weather like in London"}, {"role": "assistant", "content": "Wet."}]
    hit = client.lookup(APP, "And in Paris?", key={"context": paraphrased})
    assert hit.hit and hit.response == b"Paris: sunny."
    hotels = [{"role": "user", "content": "Recommend a hotel in London"}, {"role": "assistant", "content": "The Savoy."}]
    assert not client.lookup(APP, "And in Paris?", key={"context": hotels}).hit
    # Both follow-ups are kept: one previous turn does not replace the other's entry.
    client.store(APP, "And in Paris?", "Le Meurice.", key={"context": hotels})
    assert client.lookup(APP, "And in Paris?", key={"context": hotels}).response == b"Le Meurice."
    assert client.lookup(APP, "And in Paris?", key={"context": weather}).response == b"Paris: sunny."


def test_semantic_context_without_a_model_is_failed_precondition(make_server):
    namespaces = {"app": NamespaceSettings(context_match="semantic")}
    _, client = make_server(embedder=None, namespaces=namespaces)
    key = {"context": [{"role": "user", "content": "hi"}]}
    call = lambda: client.lookup(APP, "q", embedding=unit_vector(1), key=key)  # noqa: E731
    assert status_of(call) == grpc.StatusCode.FAILED_PRECONDITION


def test_oversized_keys_are_resource_exhausted(policy_server):
    _, client, _ = policy_server
    huge = {"context": [{"role": "user", "content": "x" * 1000}] * 1100}
    assert status_of(lambda: client.lookup(APP, "q", embedding=unit_vector(1), key=huge)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    big = {"settings": {"tools": "x" * (1 << 20)}}
    call = lambda: client.store(APP, "q", "a", embedding=unit_vector(1), key=big)  # noqa: E731
    assert status_of(call) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_refresh_skips_the_lookup_and_the_next_store_replaces(policy_server):
    _, client, _ = policy_server
    vector = unit_vector(5)
    client.store(APP, "price of gold", "old", embedding=vector)
    refreshed = client.lookup(APP, "price of gold", embedding=vector, refresh=True)
    assert not refreshed.hit and refreshed.decided_by == "refresh"
    fresh = client.get_or_compute(APP, "price of gold", lambda: "new", embedding=vector, refresh=True)
    assert fresh == "new"
    assert client.lookup(APP, "price of gold", embedding=vector).response == b"new"


def test_max_age_accepts_only_younger_entries(policy_server):
    _, client, clock = policy_server
    vector = unit_vector(6)
    client.store(APP, "news today", "headline", embedding=vector)
    clock.advance(120)
    assert client.lookup(APP, "news today", embedding=vector, max_age_seconds=300).hit
    assert not client.lookup(APP, "news today", embedding=vector, max_age_seconds=60).hit
    near = vector_at_similarity(vector, 0.95, seed=7)
    assert not client.lookup(APP, "today's news", embedding=near, max_age_seconds=60).hit
    assert client.lookup(APP, "today's news", embedding=near).hit


def test_no_store_computes_without_storing(policy_server):
    _, client, _ = policy_server
    calls = []
    value = client.get_or_compute(
        APP, "private question", lambda: calls.append(1) or "secret", embedding=unit_vector(8), no_store=True
    )
    assert value == "secret" and calls == [1]
    assert not client.lookup(APP, "private question").hit
    assert client.stats().entries == 0
    found = client.lookup(APP, "private question", embedding=unit_vector(8), lease=True, no_store=True)
    assert not found.hit and found.lease_id == ""  # no lease for a caller that will not store


def test_key_settings_per_namespace_choose_what_counts(make_server):
    namespaces = {"app": NamespaceSettings(key_settings="tools")}
    _, client = make_server(embedder=None, namespaces=namespaces)
    vector = unit_vector(9)
    client.store(APP, "q", "a", embedding=vector, key=request_key({"tools": TOOLS, "temperature": 0}))
    assert client.lookup(APP, "q", embedding=vector, key=request_key({"tools": TOOLS, "temperature": 1})).hit
    assert not client.lookup(APP, "q", embedding=vector, key=request_key({"tools": [], "temperature": 0})).hit


def test_key_survives_a_restart(make_server, tmp_path):
    server, client = make_server(embedder=None)
    vector = unit_vector(10)
    key = request_key({"seed": 42})
    client.store(APP, "q", "a", embedding=vector, key=key)
    client.close()
    server.stop(grace_seconds=1)
    _, client = make_server(embedder=None)
    assert client.lookup(APP, "q", embedding=vector, key=key).exact
    assert not client.lookup(APP, "q", embedding=vector).hit
    assert client.stats().entries == 1


def test_consistency_check_holds_with_keys(policy_server):
    server, client, _ = policy_server
    for i in range(5):
        client.store(APP, f"q{i}", "a", embedding=unit_vector(20 + i), key=request_key({"temperature": i % 2}))
    assert server.cache.check_consistency() == []
    client.invalidate(APP)
    assert server.cache.check_consistency() == [] and client.stats().entries == 0
