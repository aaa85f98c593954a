"""Start-up: rebuild the in-memory state (partitions, FAISS indexes, eviction policy,
counters) from LMDB, finish what a crash cut off, and check the two agree."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np

from semcache_server.calibration import parse_calibration
from semcache_server.entries import entry_bytes
from semcache_server.errors import ConfigError
from semcache_server.eviction import EvictionPolicy
from semcache_server.invalidation import Invalidator
from semcache_server.lookup_ids import KEY_BYTES, new_key
from semcache_server.partition import PartitionKey
from semcache_server.partition_registry import LivePartition, PartitionRegistry
from semcache_server.settings import Settings
from semcache_server.store import ENTRY_ID_COUNTER, Store
from semcache_server.v1.records_pb2 import PartitionRecord
from semcache_server.writes import Writer

log = logging.getLogger("semcache")


@dataclasses.dataclass
class Recovered:
    """What recovery read from LMDB's meta table besides the entries."""

    totals: PartitionRecord
    namespace_thresholds: dict[str, float]
    hits_table_from_entry_id: int
    lookup_id_key: bytes  # signs lookup ids (semcache_server/lookup_ids.py); made once per data dir


def read_meta(store: Store, settings: Settings, embedding_model: str, dimension: int) -> Recovered:
    """Check the data dir holds vectors of this model; read the counters and thresholds."""
    with store.write() as txn:
        stored_model = store.get_meta(txn, "embedding_model")
        stored_dimension = store.get_meta(txn, "embedding_dimension")
        if stored_model is None:
            store.put_meta(txn, "embedding_model", embedding_model)
            store.put_meta(txn, "embedding_dimension", str(dimension))
        elif (stored_model, stored_dimension) != (embedding_model, str(dimension)):
            raise ConfigError(
                f"data_dir {settings.data_dir!r} holds vectors of embedding model "
                f"{stored_model!r} ({stored_dimension} dims); this server uses {embedding_model!r} "
                f"({dimension} dims). Use another data_dir, or delete this one."
            )
        # Entries from this id on were stored by a version that keeps hit counts in
        # entry_hits only; older ones may still carry them in their record.
        first = store.get_meta(txn, "hits_table_from_entry_id")
        if first is None:
            first = str(store.last_id(txn, ENTRY_ID_COUNTER) + 1)
            store.put_meta(txn, "hits_table_from_entry_id", first)
        totals_hex = store.get_meta(txn, "totals")
        totals = PartitionRecord() if totals_hex is None else PartitionRecord.FromString(bytes.fromhex(totals_hex))
        thresholds = json.loads(store.get_meta(txn, "namespace_thresholds") or "{}")
        lookup_id_key = store.get_meta(txn, LOOKUP_ID_KEY)
        if lookup_id_key is None:
            lookup_id_key = new_key().hex()
            store.put_meta(txn, LOOKUP_ID_KEY, lookup_id_key)
    return Recovered(totals, thresholds, int(first), bytes.fromhex(lookup_id_key))


def rebuild(
    store: Store,
    registry: PartitionRegistry,
    policy: EvictionPolicy,
    writer: Writer,
    invalidator: Invalidator,
    settings: Settings,
    dimension: int,
) -> None:
    """Publish every live partition with its index; finish cut-off invalidations; drop
    entries that belong to no partition."""
    dropping = []
    with store.read() as txn:
        for partition_id, record in store.iter_partitions(txn):
            if record.dropping:
                dropping.append(partition_id)
                continue
            key = PartitionKey(record.namespace, record.model, record.version)
            registry.publish(LivePartition(partition_id, key, record, settings, dimension))
    for partition_id in dropping:  # an invalidation was cut off: finish it
        invalidator.purge_partition(partition_id)
    orphans = []
    vectors: dict[int, list[bytes]] = {}
    ids: dict[int, list[int]] = {}
    with store.read() as txn, policy.bulk():
        for entry_id, entry in store.iter_entries(txn):
            partition = registry.get_by_id(entry.partition_id)
            if partition is None:
                orphans.append(entry_id)
                continue
            vectors.setdefault(partition.id, []).append(entry.embedding)
            ids.setdefault(partition.id, []).append(entry_id)
            size = entry_bytes(entry)
            partition.bytes += size
            hits = store.get_hits(txn, entry_id) or entry  # the record's: written before entry_hits
            policy.add(
                partition.key.namespace, entry_id, size, entry.created_at,
                score=hits.lfu_score or None, last_used_at=max(entry.created_at, hits.last_hit_at),
            )
    for partition_id, partition_vectors in vectors.items():
        matrix = np.frombuffer(b"".join(partition_vectors), dtype=np.float32).reshape(-1, dimension)
        live = registry.get_by_id(partition_id)
        assert live is not None
        live.index.add(np.asarray(ids[partition_id], dtype=np.int64), matrix)
    if orphans:
        writer.delete_entry_ids(orphans, reason=None)
    log.info(
        "recovered %d partitions, %d entries",
        len(registry), sum(len(p.index) for p in registry.all()),
    )


# Meta records "calibration:NAMESPACE": a namespace's audits (semcache_server/calibration.py).
CALIBRATION_PREFIX = "calibration:"
# The key lookup ids are signed with (hex), and the verdicts claimed, one record each:
# "verdict:EXPIRES_AT:MAC", EXPIRES_AT in Unix seconds, ten digits, so they sort by expiry.
LOOKUP_ID_KEY = "lookup_id_key"
VERDICT_PREFIX = "verdict:"


def check_consistency(store: Store, registry: PartitionRegistry, policy: EvictionPolicy) -> list[str]:
    """Disagreements between LMDB and the in-memory indexes and policy; [] when they agree.
    Needs the write lock held."""
    problems = []
    with store.read() as txn:
        stored: dict[int, int] = {}
        for entry_id, record in store.iter_entries(txn):
            stored[record.partition_id] = stored.get(record.partition_id, 0) + 1
            if entry_id not in policy:
                problems.append(f"entry {entry_id} is in LMDB but not tracked for eviction")
        for partition in registry.all():
            in_lmdb, in_index = stored.get(partition.id, 0), len(partition.index)
            if in_lmdb != in_index:
                problems.append(f"partition {partition.key}: {in_lmdb} entries in LMDB, {in_index} in its index")
        for partition_id, count in stored.items():
            if registry.get_by_id(partition_id) is None:
                problems.append(f"{count} entries in LMDB belong to no live partition {partition_id}")
        if policy.entries != sum(stored.values()):
            problems.append(f"{policy.entries} entries tracked for eviction, {sum(stored.values())} in LMDB")
        for name, value in store.iter_meta(txn, CALIBRATION_PREFIX):
            try:
                parse_calibration(value, window=1 << 30)
            except ValueError as e:
                problems.append(f"meta record {name!r}: {e}")
        raw_key = store.get_meta(txn, LOOKUP_ID_KEY)
        if raw_key is not None and not _is_hex(raw_key, KEY_BYTES):
            problems.append(f"meta record {LOOKUP_ID_KEY!r} is not a {KEY_BYTES}-byte key in hex")
        orphan_hits = store.count_orphan_hits(txn)
        if orphan_hits:
            problems.append(f"{orphan_hits} hit-statistics rows belong to no entry")
    return problems


def _is_hex(text: str, size_bytes: int) -> bool:
    try:
        return len(bytes.fromhex(text)) == size_bytes
    except ValueError:
        return False
