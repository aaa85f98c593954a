"""Chat-completion requests as cache requests: the partition, query and request key an
adapter looks up and stores under, and when a request is not cached at all."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from semcache_server.client_requests import request_key
from semcache_server.v1 import semcache_pb2 as pb

log = logging.getLogger("semcache_server.integrations")
SYSTEM_ROLES = ("system", "developer")
# What a stored response holds, in its metadata.
FORMAT_KEY = "semcache.format"
# Settings an adapter never sends in the key: the request's plumbing, not what the model saw.
PLUMBING = frozenset({"messages", "model", "extra_headers", "extra_query", "timeout", "stream", "stream_options"})


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    partition: dict[str, str]
    query: str
    key: pb.RequestKey


def chat_request(
    namespace: str, model: str, messages: Sequence[Any], settings: Mapping[str, Any],
) -> ChatRequest | None:
    """The cache request for a chat call; None when it must go to the model uncached
    (the last message is not a user's text, e.g. a tool result or an image)."""
    plain = [_as_dict(m) for m in messages]
    leading = 0
    while leading < len(plain) and plain[leading].get("role") in SYSTEM_ROLES:
        leading += 1
    system = [_text(m.get("content")) for m in plain[:leading]]
    turns = plain[leading:]
    if not turns or turns[-1].get("role") != "user" or any(s is None for s in system):
        return None
    query = _text(turns[-1].get("content"))
    if not query or set(turns[-1]) - {"role", "content"}:
        return None
    context = [(str(m.get("role", "")), _turn_text(m)) for m in turns[:-1]]
    counted = {name: value for name, value in settings.items() if name not in PLUMBING and _given(value)}
    partition = {"namespace": namespace, "model": model, "system_prompt": "\n\n".join(s for s in system if s)}
    return ChatRequest(partition, query, request_key(counted, context))


def _as_dict(message: Any) -> dict[str, Any]:
    if isinstance(message, Mapping):
        return dict(message)
    if hasattr(message, "model_dump"):
        return dict(message.model_dump(exclude_none=True))
    return dict(vars(message))


def _text(content: Any) -> str | None:
    """A message's text; None when it has parts other than text."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list) and all(isinstance(p, Mapping) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    return None


def _turn_text(message: Mapping[str, Any]) -> str:
    """An earlier turn, exactly: its text, or all of it as JSON when it has more
    (tool calls, a tool result's id, non-text parts)."""
    text = _text(message.get("content"))
    if text is not None and set(message) <= {"role", "content"}:
        return text
    return json.dumps({k: v for k, v in message.items() if k != "role"}, sort_keys=True, default=str)


def _given(value: Any) -> bool:
    """False for None and the OpenAI SDK's NOT_GIVEN / omit markers."""
    return value is not None and type(value).__name__ not in ("NotGiven", "Omit")


def cache_trouble(error: BaseException) -> bool:
    """An error of the cache's (any gRPC error): the call goes to the model instead."""
    if isinstance(error, grpc.RpcError):
        log.warning("semcache unavailable for this call, calling the model: %s", getattr(error, "details", lambda: "")())
        return True
    return False


def cached_response(cache: Any, request: ChatRequest, response_format: str, min_similarity: float | None) -> bytes | None:
    """The stored response of a hit in this format; None on a miss, another format, or
    trouble with the cache (the call then goes to the model)."""
    try:
        found = cache.lookup(request.partition, request.query, key=request.key, min_similarity=min_similarity)
    except Exception as e:
        if not cache_trouble(e):
            raise
        return None
    if not found.hit or found.metadata.get(FORMAT_KEY) != response_format:
        return None
    return bytes(found.response)


def store_response(cache: Any, request: ChatRequest, response: str, response_format: str, ttl_seconds: int) -> None:
    """Store a response in this format; skipped where the cache is in trouble."""
    try:
        cache.store(
            request.partition, request.query, response, key=request.key, ttl_seconds=ttl_seconds,
            metadata={FORMAT_KEY: response_format},
        )
    except Exception as e:
        if not cache_trouble(e):
            raise
