"""The storage seam: everything the engine asks of the place that holds its entries.

Two implement it: `LocalStorage` (LMDB records + a FAISS index per partition, on this
node; the default) and `RedisStorage` (Redis Cluster shared by many frontends, each with
FAISS replicas; semcache_server/redis_backend). `open_storage` picks one by `backend`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol, TypeVar

import numpy as np

from semcache_server.decision import Candidate
from semcache_server.entries import StatsView, StoreResult
from semcache_server.errors import SemcacheError
from semcache_server.group_commit import StoreJob
from semcache_server.key_fingerprint import CandidateFilter
from semcache_server.partition import PartitionKey
from semcache_server.settings import Settings
from semcache_server.v1.records_pb2 import EntryRecord


class PartitionHandle(Protocol):
    """A live partition as the engine sees it."""

    key: PartitionKey


# The partition type an implementation hands out and takes back: the engine only
# passes it along (and reads its key).
PartitionT = TypeVar("PartitionT", bound=PartitionHandle)


class CandidateStream(Protocol):
    """Live candidates of one partition for one vector, best first; a context manager
    that releases what it holds (read transactions) on exit."""

    search_seconds: list[float]  # one figure per vector search it ran

    def __iter__(self) -> Iterator[Candidate]: ...
    def __enter__(self) -> CandidateStream: ...
    def __exit__(self, *exc: object) -> None: ...


class CacheStorage(Protocol[PartitionT]):
    namespace_thresholds: Mapping[str, float]  # as recovered at start
    calibrations: Mapping[str, str]  # namespace -> its audits (semcache_server/calibration.py), as recovered
    recovery_seconds: float
    lookup_id_key: bytes  # signs lookup ids (semcache_server/lookup_ids.py); one per cache, kept in it

    # -- lookups
    def partition(self, key: PartitionKey) -> PartitionT | None: ...
    # `match`: what a candidate must agree on besides the partition (key, context, age).
    def exact_candidate(
        self, partition: PartitionT, normalized_query: str, now: float, match: CandidateFilter = ...,
    ) -> Candidate | None: ...
    def candidates(
        self, partition: PartitionT, vector: np.ndarray, now: float, match: CandidateFilter = ...,
    ) -> CandidateStream: ...
    def count_lookup(
        self, partition: PartitionT | None, outcome: str, *, candidate: Candidate | None = None,
        now: float = 0.0, sliding_ttl: bool = False,
    ) -> None: ...

    # -- stores
    def budget_refuses(self, namespace: str, size_bytes: int) -> int: ...
    def commit(self, job: StoreJob) -> StoreResult: ...
    def commit_all(self, jobs: Sequence[StoreJob]) -> list[StoreResult | SemcacheError]: ...
    @property
    def store_commits(self) -> int: ...

    def entry(self, key: PartitionKey, entry_id: int) -> EntryRecord | None: ...
    def record_verdict(
        self, key: PartitionKey, entry_id: int, correct: bool, change: Callable[[EntryRecord], None] | None,
    ) -> bool: ...
    # True the first time: a verdict on one lookup id (its MAC) counts once, until the id expires.
    def claim_verdict(self, key: PartitionKey, claim: bytes, expires_at: float) -> bool: ...

    # -- removals and settings
    def delete(self, key: PartitionKey, entry_id: int) -> bool: ...
    def invalidate(
        self, key: PartitionKey, *, all_versions: bool, whole_namespace: bool, metadata_match: Mapping[str, str] | None,
    ) -> int: ...
    def save_namespace_thresholds(self, thresholds: dict[str, float]) -> None: ...

    def save_calibration(self, namespace: str, data: str) -> None: ...
    # Called with the whole mapping when another frontend of a shared backend changed it.
    def watch_namespace_thresholds(self, changed: Callable[[Mapping[str, float]], None]) -> None: ...

    # -- reporting and upkeep
    def stats(
        self, namespace: str | None, model: str, version: str, *,
        allowed: Callable[[str], bool] | None, listed: int | None,
    ) -> StatsView: ...
    def check_consistency(self) -> list[str]: ...
    def flush_stats(self) -> None: ...
    def sweep_expired(self) -> int: ...
    def wait_for_purges(self) -> None: ...
    def start_maintenance(self) -> None: ...
    def close(self) -> None: ...


def open_storage(settings: Settings, dimension: int, embedding_model: str, clock: Callable[[], float]) -> CacheStorage:
    """The backend `settings.backend` names: LMDB on this node (""), or Redis Cluster."""
    if settings.backend:
        from semcache_server.redis_backend.storage import RedisStorage

        return RedisStorage(settings, dimension, embedding_model, clock)
    from semcache_server.local_storage import LocalStorage

    return LocalStorage(settings, dimension, embedding_model, clock)
