"""LangChain's LLM cache, semantic:

    from langchain_core.globals import set_llm_cache
    from semcache_server import Client
    from semcache_server.integrations.langchain import SemcacheCache

    set_llm_cache(SemcacheCache(Client("127.0.0.1:50051"), namespace="support"))

LangChain hands a cache the prompt (for chat models, the serialized messages) and the
`llm_string` (the model's class and every parameter). The key is built as for the other
adapters (semcache_server.integrations.chat): leading system messages and the model in the
partition, the last human message as the query, the earlier turns as context, and
`llm_string` as a setting, so another model or temperature never shares an answer.
Generations are stored as JSON (no pickles). A cache that is down is a miss.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.messages import message_to_dict, messages_from_dict
from langchain_core.outputs import ChatGeneration, Generation

from semcache_server.client import Client
from semcache_server.client_requests import request_key
from semcache_server.integrations.chat import ChatRequest, cached_response, chat_request, store_response

FORMAT = "langchain.generations"
_ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool", "function": "function"}


class SemcacheCache(BaseCache):
    def __init__(self, cache: Client, *, namespace: str = "default", ttl_seconds: int = 0, min_similarity: float | None = None):
        self._cache = cache
        self._namespace = namespace
        self._ttl_seconds = ttl_seconds
        self._min_similarity = min_similarity

    def _request(self, prompt: str, llm_string: str) -> ChatRequest | None:
        settings = {"llm_string": llm_string}
        messages = _chat_messages(prompt)
        if messages is None:  # a plain-text LLM's prompt
            return ChatRequest({"namespace": self._namespace, "model": "langchain"}, prompt, request_key(settings))
        return chat_request(self._namespace, "langchain", messages, settings)

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        request = self._request(prompt, llm_string)
        if request is None or not request.query:
            return None
        raw = cached_response(self._cache, request, FORMAT, self._min_similarity)
        return None if raw is None else _generations(raw)

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        request = self._request(prompt, llm_string)
        if request is None or not request.query:
            return
        store_response(self._cache, request, _serialized(return_val), FORMAT, self._ttl_seconds)

    def clear(self, **kwargs: Any) -> None:
        """Remove every entry of this cache's namespace."""
        self._cache.invalidate({"namespace": self._namespace}, whole_namespace=True)


def _chat_messages(prompt: str) -> list[dict[str, Any]] | None:
    """A chat model's serialized messages as role/content dicts; None for a text prompt."""
    try:
        items = json.loads(prompt)
    except ValueError:
        return None
    if not isinstance(items, list) or not all(isinstance(i, dict) and "kwargs" in i for i in items):
        return None
    messages = []
    for item in items:
        fields = dict(item["kwargs"])
        kind = str(fields.pop("type", "")) or str(item.get("id", [""])[-1]).removesuffix("Message").lower()
        message = {"role": _ROLES.get(kind, kind), "content": fields.pop("content", "")}
        message.update({k: v for k, v in fields.items() if v not in (None, "", [], {})})
        messages.append(message)
    return messages


def _serialized(generations: Sequence[Generation]) -> str:
    items = []
    for g in generations:
        item: dict[str, Any] = {"text": g.text, "generation_info": g.generation_info}
        if isinstance(g, ChatGeneration):
            item["message"] = message_to_dict(g.message)
        items.append(item)
    return json.dumps(items)


def _generations(raw: bytes) -> list[Generation] | None:
    try:
        items = json.loads(raw)
        return [
            ChatGeneration(message=messages_from_dict([i["message"]])[0], generation_info=i.get("generation_info"))
            if "message" in i else Generation(text=i["text"], generation_info=i.get("generation_info"))
            for i in items
        ]
    except (ValueError, KeyError, TypeError):
        return None
