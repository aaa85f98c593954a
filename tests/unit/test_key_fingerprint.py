"""The request key's fingerprint: which settings count, JSON compared by content, context."""

from __future__ import annotations

import numpy as np

from semcache_server.key_fingerprint import (
    PLAIN_KEY,
    SEMANTIC_CONTEXT,
    CandidateFilter,
    KeyParts,
    KeyPolicy,
    Turn,
    names,
    resolve,
)
from semcache_server.v1.records_pb2 import EntryRecord

DEFAULT = KeyPolicy()


def fingerprint(settings=None, context=(), policy=DEFAULT):
    return resolve(KeyParts(settings or {}, tuple(context)), policy).fingerprint


def test_no_key_is_the_plain_key():
    assert resolve(KeyParts(), DEFAULT) == PLAIN_KEY
    assert fingerprint() == ""


def test_json_values_compare_by_content_not_spelling():
    a = fingerprint({"response_format": '{"type": "json_object", "schema": {"a": 1, "b": 2.0}}', "temperature": "0.70"})
    b = fingerprint({"temperature": "0.7", "response_format": '{"schema":{"b":2,"a":1},"type":"json_object"}'})
    assert a == b and a != ""


def test_a_changed_setting_or_tool_changes_the_fingerprint():
    tools = '[{"type": "function", "function": {"name": "get_weather"}}]'
    base = fingerprint({"temperature": "0", "tools": tools})
    assert base != fingerprint({"temperature": "0.2", "tools": tools})
    assert base != fingerprint({"temperature": "0", "tools": tools.replace("get_weather", "get_hotels")})
    assert base != fingerprint({"temperature": "0"})


def test_plain_text_values_equal_their_json_string():
    assert fingerprint({"model_hint": "auto"}) == fingerprint({"model_hint": '"auto"'})


def test_ignored_settings_do_not_count_and_an_allowlist_narrows():
    assert fingerprint({"stream": "true", "user": '"u1"'}) == ""
    assert fingerprint({"temperature": "0", "stream": "true"}) == fingerprint({"temperature": "0"})
    only_tools = KeyPolicy(counted=names("tools"), ignored=frozenset())
    assert fingerprint({"tools": "[]", "temperature": "1"}, policy=only_tools) == fingerprint({"tools": "[]"}, policy=only_tools)


def test_context_counts_exactly_by_default():
    weather = [Turn("user", "What's the weather in London?"), Turn("assistant", "Rainy.")]
    hotels = [Turn("user", "Find me a hotel in London"), Turn("assistant", "The Savoy.")]
    assert fingerprint(context=weather) != fingerprint(context=hotels)
    assert fingerprint(context=weather) == fingerprint(context=list(weather))
    assert fingerprint(context=weather) != fingerprint(context=weather[:1])


def test_semantic_context_keeps_the_previous_user_turn_apart():
    policy = KeyPolicy(context_match=SEMANTIC_CONTEXT)
    first = resolve(KeyParts({}, (Turn("system", "s"), Turn("user", "weather in London?"), Turn("assistant", "Rain"))), policy)
    second = resolve(KeyParts({}, (Turn("system", "s"), Turn("user", "London weather"), Turn("assistant", "Sun"))), policy)
    assert first.previous_turn == "weather in London?"
    assert first.fingerprint == second.fingerprint  # the turns before it agree; the assistant's reply does not count
    assert first.exact_suffix != second.exact_suffix  # different previous turns never replace each other
    exact_mode = resolve(KeyParts({}, (Turn("system", "s"), Turn("user", "weather in London?"))), DEFAULT)
    assert exact_mode.fingerprint != first.fingerprint


def test_filter_refuses_other_keys_old_entries_and_unlike_contexts():
    record = EntryRecord(key_fingerprint="abc", created_at=100.0)
    assert CandidateFilter(key_fingerprint="abc").accepts(record)
    assert not CandidateFilter(key_fingerprint="").accepts(record)
    assert not CandidateFilter(key_fingerprint="abc", min_created_at=101.0).accepts(record)
    unit = np.zeros(4, dtype=np.float32)
    unit[0] = 1.0
    record.context_embedding = unit.tobytes()
    assert not CandidateFilter(key_fingerprint="abc").accepts(record)  # a semantic-context entry needs a context
    near = np.array([0.95, np.sqrt(1 - 0.95**2), 0, 0], dtype=np.float32)
    far = np.array([0.5, np.sqrt(0.75), 0, 0], dtype=np.float32)
    assert CandidateFilter(key_fingerprint="abc", context_vector=near, context_min_similarity=0.9).accepts(record)
    assert not CandidateFilter(key_fingerprint="abc", context_vector=far, context_min_similarity=0.9).accepts(record)
