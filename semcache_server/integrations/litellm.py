"""LiteLLM's custom-cache hook, semantic:

    import litellm
    from semcache_server import Client
    from semcache_server.integrations.litellm import enable

    enable(Client("127.0.0.1:50051"), namespace="support")   # sets litellm.cache
    litellm.completion(model="openai/gpt-4o-mini", messages=[...])

LiteLLM computes a cache key from the request. `enable` installs a litellm `Cache`
that leaves the messages out of that key, as LiteLLM's own semantic caches do, so
the key is the request's scope: model, every other setting and tool, and the proxy's
tenant. semcache takes it as a request-key setting and the messages as query (the
last user message), partition (leading system messages) and context (the earlier
turns): a paraphrase hits within one scope, never across. LiteLLM's own checks
(max-age, max_messages, per-call `cache={"no-cache": True}`) apply as usual. A cache
that is down is a miss.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import litellm
from litellm.caching.base_cache import BaseCache
from litellm.caching.caching import Cache, LiteLLMCacheType

from semcache_server.client import Client
from semcache_server.integrations.chat import ChatRequest, cached_response, chat_request, store_response

FORMAT = "litellm.cached_data"


class SemcacheLiteLLMCache(BaseCache):
    """The backend behind `enable`'s Cache: get_cache/set_cache and their async forms."""

    def __init__(self, cache: Client, *, namespace: str = "default", ttl_seconds: int = 0, min_similarity: float | None = None):
        super().__init__(default_ttl=ttl_seconds)
        self._cache = cache
        self._namespace = namespace
        self._ttl_seconds = ttl_seconds
        self._min_similarity = min_similarity

    def _request(self, key: str, kwargs: dict[str, Any]) -> ChatRequest | None:
        messages = kwargs.get("messages")
        if not isinstance(messages, list):
            return None
        return chat_request(self._namespace, "litellm", messages, {"litellm_scope": key})

    def get_cache(self, key: str, **kwargs: Any) -> Any:
        request = self._request(key, kwargs)
        if request is None:
            return None
        raw = cached_response(self._cache, request, FORMAT, self._min_similarity)
        return None if raw is None else json.loads(raw)

    def set_cache(self, key: str, value: Any, **kwargs: Any) -> None:
        request = self._request(key, kwargs)
        if request is None:
            return
        ttl = kwargs.get("ttl")
        ttl_seconds = int(ttl) if isinstance(ttl, int | float) and ttl > 0 else self._ttl_seconds
        store_response(self._cache, request, json.dumps(value, default=str), FORMAT, ttl_seconds)

    async def async_get_cache(self, key: str, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self.get_cache, key, **kwargs)

    async def async_set_cache(self, key: str, value: Any, **kwargs: Any) -> None:
        await asyncio.to_thread(self.set_cache, key, value, **kwargs)

    async def async_set_cache_pipeline(self, cache_list: list[tuple[str, Any]], **kwargs: Any) -> None:
        for key, value in cache_list:
            await self.async_set_cache(key, value, **kwargs)


class _ScopedCache(Cache):
    """A litellm Cache whose key leaves the prompt out (the scope), as for its semantic caches."""

    def _is_semantic_cache(self) -> bool:
        return True


def enable(cache: Client, *, namespace: str = "default", ttl_seconds: int = 0, min_similarity: float | None = None) -> Cache:
    """Serve litellm.completion / acompletion from semcache; returns the installed Cache."""
    installed = _ScopedCache(type=LiteLLMCacheType.LOCAL)
    installed.cache = SemcacheLiteLLMCache(cache, namespace=namespace, ttl_seconds=ttl_seconds, min_similarity=min_similarity)
    litellm.cache = installed
    return installed
