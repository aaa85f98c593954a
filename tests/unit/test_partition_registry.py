"""The partition registry's scopes and the version-retirement choice."""

from __future__ import annotations

from semcache_server.partition import PartitionKey
from semcache_server.partition_registry import LivePartition, PartitionRegistry, versions_to_retire
from semcache_server.settings import Settings
from semcache_server.v1.records_pb2 import PartitionRecord


def _partition(partition_id: int, namespace: str, model: str, version: str, last_used_at: float = 0.0) -> LivePartition:
    record = PartitionRecord(namespace=namespace, model=model, version=version, last_used_at=last_used_at)
    return LivePartition(partition_id, PartitionKey(namespace, model, version), record, Settings(), 4)


def _registry() -> PartitionRegistry:
    registry = PartitionRegistry()
    for p in (_partition(1, "a", "m", "v1"), _partition(2, "a", "m", "v2"), _partition(3, "a", "n", "v1"),
              _partition(4, "b", "m", "v1")):
        registry.publish(p)
    return registry


def test_scopes_select_a_partition_its_versions_or_its_namespace():
    registry = _registry()
    key = PartitionKey("a", "m", "v1")
    assert [p.id for p in registry.in_scope(key, all_versions=False, whole_namespace=False)] == [1]
    assert sorted(p.id for p in registry.in_scope(key, all_versions=True, whole_namespace=False)) == [1, 2]
    assert sorted(p.id for p in registry.in_scope(key, all_versions=False, whole_namespace=True)) == [1, 2, 3]
    assert registry.in_scope(PartitionKey("a", "m", "v9"), all_versions=False, whole_namespace=False) == []


def test_an_unpublished_partition_is_found_by_no_lookup():
    registry = _registry()
    partition = registry.get(PartitionKey("a", "m", "v1"))
    assert partition is not None
    registry.unpublish(partition)
    assert registry.get(partition.key) is None and registry.get_by_id(1) is None
    assert [p.id for p in registry.versions("a", "m")] == [2]
    registry.unpublish(registry.get_by_id(2))  # type: ignore[arg-type]
    assert registry.versions("a", "m") == [] and len(registry) == 2


def test_a_new_version_retires_the_least_recently_used_beyond_the_limit():
    siblings = [_partition(1, "a", "m", "v1", 30.0), _partition(2, "a", "m", "v2", 10.0), _partition(3, "a", "m", "v3", 20.0)]
    assert [p.id for p in versions_to_retire(siblings, 2)] == [2, 3]  # room for the new one: keep 1 of 3
    assert [p.id for p in versions_to_retire(siblings, 3)] == [2]
    assert versions_to_retire(siblings, 4) == []
    assert versions_to_retire(siblings, 0) == []  # 0: no limit
