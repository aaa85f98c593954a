"""Request validation: what a Lookup or Store may carry, checked before any work is done."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from semcache_server.errors import FailedPreconditionError, InvalidArgumentError, ResourceExhaustedError
from semcache_server.key_fingerprint import KeyParts
from semcache_server.normalize import normalize_query
from semcache_server.settings import Settings

NO_MODEL = "this server runs without an embedding model; send an embedding"
# Entry ids are 8-byte unsigned in LMDB; ids are ASCII digits (not Arabic-Indic ones, which isdigit() takes too).
MAX_ENTRY_ID = (1 << 64) - 1
# The most one response may cost: far above any LLM call, and small enough that the
# saved-cost totals (cost x hits) stay finite.
MAX_COST = 1e12


def check_similarity(min_similarity: float) -> None:
    if not (math.isfinite(min_similarity) and -1.0 <= min_similarity <= 1.0):
        raise InvalidArgumentError(f"min_similarity must be between -1 and 1, got {min_similarity}")


def parse_entry_id(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 20 or int(text) > MAX_ENTRY_ID:
        raise InvalidArgumentError(f"entry_id {text[:40]!r} is not an entry id (decimal digits, below 2^64)")
    return int(text)


class RequestValidator:
    """The server's limits on queries, vectors, responses and metadata."""

    def __init__(self, settings: Settings, dimension: int, *, has_model: bool) -> None:
        self.settings = settings
        self.dimension = dimension
        self.has_model = has_model

    def client_vector(self, embedding: Sequence[float] | np.ndarray | None) -> np.ndarray | None:
        """The L2-normalized client vector, or None when the client sent none."""
        if embedding is None or len(embedding) == 0:
            return None
        # A copy (np.array, not asarray): it is scaled in place below. One dot product
        # gives the norm and, being NaN or infinite exactly when an element is, the
        # finiteness check (~7 us per request instead of ~22 us with isfinite + norm).
        vector = np.array(embedding, dtype=np.float64)
        if vector.shape != (self.dimension,):
            raise InvalidArgumentError(
                f"embedding has {vector.size} dimensions; this server's model has {self.dimension}"
            )
        norm = math.sqrt(float(vector @ vector))
        if not math.isfinite(norm):
            raise InvalidArgumentError("embedding contains NaN or infinity")
        if norm == 0.0:
            raise InvalidArgumentError("embedding is all zeros")
        vector /= norm
        return vector.astype(np.float32)

    def query(self, query: str, has_embedding: bool) -> str:
        """The normalized query (for the exact tier); "" when only the vector counts."""
        size = len(query.encode("utf-8", "surrogatepass"))
        if size > self.settings.max_query_bytes:
            raise ResourceExhaustedError(
                f"query is {size} bytes; the limit is {self.settings.max_query_bytes} (max_query_bytes)"
            )
        normalized = normalize_query(query)
        if not normalized and not has_embedding:
            raise InvalidArgumentError("query is empty and no embedding was given")
        return normalized

    def key(self, parts: KeyParts) -> None:
        """A request key's size: settings and context together, and the number of turns."""
        if len(parts.context) > self.settings.max_context_turns:
            raise ResourceExhaustedError(
                f"key.context has {len(parts.context)} turns; the limit is {self.settings.max_context_turns} (max_context_turns)"
            )
        texts = [*parts.settings.keys(), *parts.settings.values(), *(t.role for t in parts.context)]
        texts += [t.content for t in parts.context]
        size = sum(len(text.encode("utf-8", "surrogatepass")) for text in texts)
        if size > self.settings.max_key_bytes:
            raise ResourceExhaustedError(f"key is {size} bytes; the limit is {self.settings.max_key_bytes} (max_key_bytes)")

    def store_fields(
        self, response: bytes, metadata: Mapping[str, str], cost: float, ttl_seconds: int, has_vector: bool
    ) -> None:
        """What a Store carries besides its query and vector."""
        if len(response) > self.settings.max_response_bytes:
            raise ResourceExhaustedError(
                f"response is {len(response)} bytes; the limit is {self.settings.max_response_bytes} (max_response_bytes)"
            )
        self._metadata(metadata)
        if not (math.isfinite(cost) and 0 <= cost <= MAX_COST):
            raise InvalidArgumentError(f"cost must be a number from 0 to {MAX_COST:g}, got {cost}")
        if ttl_seconds < 0:
            raise InvalidArgumentError(f"ttl_seconds must be >= 0, got {ttl_seconds}")
        if not has_vector and not self.has_model:
            raise FailedPreconditionError(NO_MODEL)

    def _metadata(self, metadata: Mapping[str, str]) -> None:
        if len(metadata) > self.settings.max_metadata_entries:
            raise ResourceExhaustedError(
                f"metadata has {len(metadata)} entries; the limit is {self.settings.max_metadata_entries}"
            )
        size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
        if size > self.settings.max_metadata_bytes:
            raise ResourceExhaustedError(
                f"metadata is {size} bytes; the limit is {self.settings.max_metadata_bytes} (max_metadata_bytes)"
            )
