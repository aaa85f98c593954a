"""The whole cache key: what the LLM saw besides the partition and the query.

Two requests share an answer only when their keys agree:
- settings and tools (temperature, seed, response_format, tools, ...) by an exact
  fingerprint of the names that count in the namespace (`key_settings`, or all but
  `key_settings_ignored`); JSON values compare by content, not by spelling;
- the conversation's earlier turns by an exact fingerprint; with the namespace's
  `context_match = "semantic"`, the previous user turn by meaning instead (its vector,
  kept with the entry, must reach the namespace's threshold) and the turns before it
  exactly. Turns after the previous user turn (the assistant's reply to it) do not
  count in that mode.

The fingerprint is stored with each entry and is part of its exact-tier key; a
semantic candidate whose fingerprint differs is never a candidate (`CandidateFilter`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from semcache_server.normalize import normalize_query
from semcache_server.v1.records_pb2 import EntryRecord

EXACT_CONTEXT = "exact"
SEMANTIC_CONTEXT = "semantic"
CONTEXT_MATCHES = (EXACT_CONTEXT, SEMANTIC_CONTEXT)
# Settings that change how an answer is delivered or billed, not what it says.
DEFAULT_IGNORED_SETTINGS = "stream,stream_options,user,timeout,extra_headers,extra_query"


@dataclasses.dataclass(frozen=True)
class Turn:
    role: str
    content: str


@dataclasses.dataclass(frozen=True)
class KeyParts:
    """A request's key as sent: settings name -> JSON text, earlier turns oldest first."""

    settings: Mapping[str, str] = dataclasses.field(default_factory=dict)
    context: Sequence[Turn] = ()


NO_KEY = KeyParts()


@dataclasses.dataclass(frozen=True)
class KeyPolicy:
    """Which parts of a key count in a namespace."""

    counted: frozenset[str] | None = None  # None: every name not ignored
    ignored: frozenset[str] = frozenset(DEFAULT_IGNORED_SETTINGS.split(","))
    context_match: str = EXACT_CONTEXT

    def counts(self, name: str) -> bool:
        return (self.counted is None or name in self.counted) and name not in self.ignored


def names(spec: str) -> frozenset[str]:
    """A comma-separated settings list as a set."""
    return frozenset(name.strip() for name in spec.split(",") if name.strip())


@dataclasses.dataclass(frozen=True)
class ResolvedKey:
    """A key as the engine uses it."""

    fingerprint: str = ""  # "" when nothing counts: the key of a request without one
    previous_turn: str = ""  # semantic context: the text whose meaning must match
    exact_suffix: str = ""  # appended to the normalized query for the exact tier

    @property
    def semantic_context(self) -> bool:
        return bool(self.previous_turn)


PLAIN_KEY = ResolvedKey()


def resolve(parts: KeyParts, policy: KeyPolicy) -> ResolvedKey:
    settings = {name: _canonical_json(value) for name, value in parts.settings.items() if policy.counts(name)}
    context = list(parts.context)
    previous_turn = ""
    if policy.context_match == SEMANTIC_CONTEXT:
        users = [i for i, turn in enumerate(context) if turn.role == "user"]
        if users:
            previous_turn = context[users[-1]].content
            context = context[: users[-1]]
    if not settings and not context and not previous_turn:
        return PLAIN_KEY
    body: dict[str, Any] = {"settings": settings, "context": [[t.role, t.content] for t in context]}
    if previous_turn:
        body["context_match"] = SEMANTIC_CONTEXT
    fingerprint = _digest(json.dumps(body, sort_keys=True, ensure_ascii=False))
    suffix = fingerprint
    if previous_turn:
        # Entries after different previous turns must not replace each other.
        suffix += "/" + _digest(normalize_query(previous_turn))
    return ResolvedKey(fingerprint, previous_turn, suffix)


def record_exact_suffix(record: EntryRecord) -> str:
    return record.key_fingerprint + ("/" + record.context_digest if record.context_digest else "")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _canonical_json(text: str) -> str:
    """One spelling per JSON value: keys sorted, no spaces, 1.0 as 1. A value that is
    not JSON counts as the JSON string of its text."""
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    return json.dumps(_whole_floats_as_ints(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _whole_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [_whole_floats_as_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole_floats_as_ints(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class CandidateFilter:
    """What an entry must agree on, besides its partition, to answer a Lookup."""

    key_fingerprint: str = ""
    exact_suffix: str = ""
    # Semantic context: the Lookup's previous user turn, and the cosine it needs.
    context_vector: np.ndarray | None = None
    context_min_similarity: float = 1.0
    # max_age_seconds: entries created before this (Unix seconds) are too old.
    min_created_at: float = 0.0
    # The question's digest (semcache_server/feedback.py): entries that a verdict said
    # answered it wrongly never answer it again.
    question: bytes = b""

    def accepts(self, record: EntryRecord, *, check_context: bool = True) -> bool:
        """check_context=False where the exact key already matched the previous turn's text."""
        if record.key_fingerprint != self.key_fingerprint or record.created_at < self.min_created_at:
            return False
        if self.question and self.question in record.vetoed_questions:
            return False
        if not check_context:
            return True
        if self.context_vector is None:
            return not record.context_embedding
        stored = np.frombuffer(record.context_embedding, dtype=np.float32)
        if stored.shape != self.context_vector.shape:
            return False
        return float(stored @ self.context_vector) >= self.context_min_similarity


NO_FILTER = CandidateFilter()
