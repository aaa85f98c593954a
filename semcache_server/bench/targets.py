"""Where the bench sends its lookups: an in-process cache or a running server.

Both take the real lookup path (normalization, exact tier, semantic tier); the
bench embeds every text once and passes the vector, so a sweep never re-embeds.
"""

from __future__ import annotations

import dataclasses
import tempfile
import uuid
from typing import Protocol

import numpy as np

from semcache_server.cache import SemanticCache
from semcache_server.embedder import Embedder
from semcache_server.partition import PartitionKey
from semcache_server.settings import Settings
from semcache_server.verifier.model import Verifier, load_verifier


def default_verifier() -> Verifier | None:
    """The verifier a server with default settings serves (None when it serves none)."""
    return load_verifier(Settings().verifier)


@dataclasses.dataclass(frozen=True)
class Found:
    hit: bool
    exact: bool
    similarity: float
    response: bytes
    guard_reason: str = ""
    decided_by: str = ""
    verifier_score: float | None = None  # of the hit, or of a miss's best verified candidate


class Target(Protocol):
    def store(self, version: str, query: str, response: bytes, vector: np.ndarray) -> str: ...
    def lookup(
        self, version: str, query: str, vector: np.ndarray, min_similarity: float | None, **band: float | None,
    ) -> Found: ...
    def delete(self, version: str, entry_id: str) -> None: ...
    def drop(self, version: str) -> None: ...
    def close(self) -> None: ...


class InProcessTarget:
    """A SemanticCache in a temporary data dir (fsync off: the bench measures answers, not disks).

    verifier: None decides by cosine and the guard alone (the sweeps); `default_verifier()`
    with agreement=True gives the server's default decision. agreement: neighbour
    agreement at its default settings (off: the threshold and the verifier alone)."""

    def __init__(self, embedder: Embedder, verifier: Verifier | None = None, agreement: bool = False) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="semcache-bench-")
        settings = Settings(
            data_dir=self._dir.name, sync_writes=False, max_versions_per_model=0,
            agreement_neighbours=Settings().agreement_neighbours if agreement else 0,
        )
        self._cache = SemanticCache(settings, embedder, verifier=verifier)

    def _key(self, version: str) -> PartitionKey:
        return PartitionKey("bench", "bench", version)

    def store(self, version: str, query: str, response: bytes, vector: np.ndarray) -> str:
        return self._cache.store(self._key(version), query, response, embedding=vector).entry_id

    def lookup(
        self, version: str, query: str, vector: np.ndarray, min_similarity: float | None, **band: float | None,
    ) -> Found:
        """band: verifier_band_low, verifier_min_score, verifier_veto_score (None: the settings')."""
        r = self._cache.lookup(
            self._key(version), query, embedding=vector, min_similarity=min_similarity,
            verifier_band_low=band.get("verifier_band_low"), verifier_min_score=band.get("verifier_min_score"),
            verifier_veto_score=band.get("verifier_veto_score"),
        )
        similarity = -1.0 if r.similarity is None else r.similarity
        return Found(r.hit, r.exact, similarity, r.response, r.guard_reason, r.decided_by, r.verifier_score)

    def delete(self, version: str, entry_id: str) -> None:
        self._cache.delete(self._key(version), entry_id)

    def drop(self, version: str) -> None:
        self._cache.invalidate(self._key(version))

    def close(self) -> None:
        self._cache.close()
        self._dir.cleanup()


class ServerTarget:
    """A running server, in a namespace of its own that is removed at the end."""

    def __init__(self, address: str, embedder: Embedder, token: str | None = None) -> None:
        from semcache_server.client import Client

        self._client = Client(address, token=token)
        stats = self._client.stats()
        if (stats.embedding_model, stats.embedding_dimension) != (embedder.name, embedder.dimension):
            raise SystemExit(
                f"the server embeds with {stats.embedding_model} ({stats.embedding_dimension} dims); "
                f"the bench with {embedder.name} ({embedder.dimension}): they must match"
            )
        self._namespace = f"semcache-bench-{uuid.uuid4().hex[:12]}"

    def _partition(self, version: str) -> dict[str, str]:
        return {"namespace": self._namespace, "model": "bench", "prompt_version": version}

    def store(self, version: str, query: str, response: bytes, vector: np.ndarray) -> str:
        return self._client.store(self._partition(version), query, response, embedding=vector.tolist()).entry_id

    def lookup(
        self, version: str, query: str, vector: np.ndarray, min_similarity: float | None, **band: float | None,
    ) -> Found:
        r = self._client.lookup(
            self._partition(version), query, embedding=vector.tolist(), min_similarity=min_similarity,
            **{k: v for k, v in band.items() if v is not None},
        )
        score = r.verifier_score if r.HasField("verifier_score") else None
        return Found(r.hit, r.exact, r.similarity, r.response, r.guard_reason, r.decided_by, score)

    def delete(self, version: str, entry_id: str) -> None:
        self._client.delete(self._partition(version), entry_id)

    def drop(self, version: str) -> None:
        self._client.invalidate(self._partition(version))

    def close(self) -> None:
        self._client.invalidate({"namespace": self._namespace}, whole_namespace=True)
        self._client.close()
