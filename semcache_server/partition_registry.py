"""The live partitions in memory: each one's index, counters and byte count, found by
key, by id, or by namespace + model (its versions), and which versions to retire."""

from __future__ import annotations

from collections.abc import Iterable

from semcache_server.partition import PartitionKey
from semcache_server.settings import Settings
from semcache_server.v1.records_pb2 import PartitionRecord
from semcache_server.vector_index import VectorIndex


class LivePartition:
    """In-memory state of one live partition."""

    def __init__(self, partition_id: int, key: PartitionKey, record: PartitionRecord, settings: Settings, dimension: int) -> None:
        self.id = partition_id
        self.key = key
        self.record = record  # counters and last_used_at; mutated under the ledger's lock
        self.index = VectorIndex(dimension, ivf_min_entries=settings.ivf_min_entries, ivf_nprobe=settings.ivf_nprobe)
        self.bytes = 0
        self.dirty = False


class PartitionRegistry:
    """Changed only under the storage's write lock; read without a lock (dict reads are
    atomic, and lookups copy what they iterate)."""

    def __init__(self) -> None:
        self._by_key: dict[PartitionKey, LivePartition] = {}
        self._by_id: dict[int, LivePartition] = {}
        # The live versions of each namespace + model, for max_versions_per_model.
        self._versions: dict[tuple[str, str], dict[int, LivePartition]] = {}

    def get(self, key: PartitionKey) -> LivePartition | None:
        return self._by_key.get(key)

    def get_by_id(self, partition_id: int) -> LivePartition | None:
        return self._by_id.get(partition_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def all(self) -> list[LivePartition]:
        return list(self._by_id.values())

    def versions(self, namespace: str, model: str) -> list[LivePartition]:
        return list(self._versions.get((namespace, model), {}).values())

    def in_namespace(self, namespace: str) -> list[LivePartition]:
        return [p for p in self.all() if p.key.namespace == namespace]

    def in_scope(self, key: PartitionKey, *, all_versions: bool, whole_namespace: bool) -> list[LivePartition]:
        """The partitions an Invalidate of this scope removes."""
        if whole_namespace:
            return self.in_namespace(key.namespace)
        if all_versions:
            return self.versions(key.namespace, key.model)
        partition = self.get(key)
        return [] if partition is None else [partition]

    def publish(self, partition: LivePartition) -> None:
        self._by_key[partition.key] = partition
        self._by_id[partition.id] = partition
        self._versions.setdefault((partition.key.namespace, partition.key.model), {})[partition.id] = partition

    def unpublish(self, partition: LivePartition) -> None:
        self._by_key.pop(partition.key, None)
        self._by_id.pop(partition.id, None)
        versions = self._versions.get((partition.key.namespace, partition.key.model), {})
        versions.pop(partition.id, None)
        if not versions:
            self._versions.pop((partition.key.namespace, partition.key.model), None)


def versions_to_retire(siblings: Iterable[LivePartition], max_versions: int) -> list[LivePartition]:
    """The least recently used of a namespace+model's live versions that must go so that a
    new version keeps at most max_versions (0: no limit)."""
    if not max_versions:
        return []
    live = list(siblings)
    if len(live) < max_versions:
        return []
    live.sort(key=lambda p: p.record.last_used_at)
    return live[: len(live) - max_versions + 1]
