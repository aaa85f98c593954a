"""Every change the redis backend makes to a partition: Stores, removals, invalidations
and verdict amendments, each a script of scripts.py on the partition's shard (with
`redis_wait_replicas`, acknowledged by that many replicas), then applied to this
frontend's own replica at once so its next Lookup sees it."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from semcache_server import ttl
from semcache_server.entries import StoreResult, format_entry_id
from semcache_server.errors import SemcacheError, UnavailableError
from semcache_server.group_commit import StoreJob
from semcache_server.key_fingerprint import record_exact_suffix
from semcache_server.partition import PartitionKey
from semcache_server.redis_backend import scripts
from semcache_server.redis_backend.connection import redis_errors
from semcache_server.redis_backend.keys import REGISTRY, PartitionKeys, exact_key, registry_key, registry_value
from semcache_server.redis_backend.replica import RedisPartition
from semcache_server.settings import Settings
from semcache_server.v1.records_pb2 import EntryRecord

log = logging.getLogger("semcache")

# Change-log entries kept per partition (approximately): a replica further behind reloads.
LOG_MAX_LEN = 10000
# Entries without a TTL get a Redis expiry this far out, so volatile-lfu can evict them.
NO_TTL_EXPIRY_SECONDS = 100 * 365 * 86400
# Ids per script call when an invalidation or a sweep removes many entries.
REMOVE_CHUNK = 500


class RedisWriter:
    def __init__(
        self, client: Any, settings: Settings, clock: Callable[[], float], partitions: Mapping[str, RedisPartition],
        flush_counters: Callable[[], None],
    ) -> None:
        self.client = client
        self._settings = settings
        self._clock = clock
        self._partitions = partitions  # the storage's loaded replicas by hash tag (read only here)
        self._flush_counters = flush_counters  # before reading when versions were last used
        self.store_commits = 0

    def scope(self, key: PartitionKey, *, all_versions: bool, whole_namespace: bool) -> list[PartitionKey]:
        if not (all_versions or whole_namespace):
            return [key]
        with redis_errors("lists partitions"):
            registered = [registry_key(v) for v in self.client.hvals(REGISTRY)]
        return [
            k for k in registered
            if k.namespace == key.namespace and (whole_namespace or k.model == key.model)
        ]

    def _on_partition_live(self, key: PartitionKey, now: float) -> None:
        """A Store made this partition live: register it, and retire the least recently used
        versions beyond max_versions_per_model (not atomic with the Store: another shard)."""
        self.client.hset(REGISTRY, PartitionKeys.of(key).tag, registry_value(key))
        limit = self._settings.max_versions_per_model
        if not limit:
            return
        self._flush_counters()
        siblings = [k for k in self.scope(key, all_versions=True, whole_namespace=False) if k != key]
        pipe = self.client.pipeline(transaction=False)
        for sibling in siblings:
            pipe.hmget(PartitionKeys.of(sibling).meta, ["live", "last_used_at"])
        live = [
            (float(used or 0), sibling)
            for sibling, (flag, used) in zip(siblings, pipe.execute() if siblings else [], strict=True) if flag == b"1"
        ]
        for _, old in sorted(live)[: max(0, len(live) + 1 - limit)]:
            log.info("partition %s retired: more than %d versions of %s/%s", old, limit, key.namespace, key.model)
            self.clear(old)

    def store(self, job: StoreJob) -> StoreResult:
        now = self._clock()
        record = job.record
        record.created_at = now
        record.expires_at = ttl.expires_at(now, record.ttl_seconds)
        stored = EntryRecord()
        stored.CopyFrom(record)
        stored.ClearField("embedding")  # the vector lives in the partition's vectors hash
        keys = PartitionKeys.of(job.key)
        exact = exact_key(record.normalized_query, record_exact_suffix(record)) if record.normalized_query else b""
        expire_ms = int((record.expires_at or now + NO_TTL_EXPIRY_SECONDS) * 1000)
        vector = np.ascontiguousarray(job.vector, dtype=np.float32).reshape(-1)
        for _ in range(4):
            entry_id = secrets.randbits(62) or 1
            created, replaced = self.run(
                scripts.STORE,
                [keys.meta, keys.ids, keys.vectors, keys.exact, keys.log, keys.entry(entry_id)],
                [
                    entry_id, stored.SerializeToString(), expire_ms, job.size, exact, vector.tobytes(),
                    job.key.namespace, job.key.model, job.key.version, repr(now), LOG_MAX_LEN,
                    repr(record.expires_at), keys.entry_prefix,
                ],
                action="stores an entry", wait=True,
            )
            if created != -1:
                break
        else:
            raise SemcacheError("could not draw an unused entry id")  # 2^-62 four times over
        self.store_commits += 1
        replaced_id = int(replaced) if replaced else None
        if created:
            with redis_errors("registers a partition"):
                self._on_partition_live(job.key, now)
        partition = self._partitions.get(keys.tag)
        if partition is not None:
            partition.add_local(entry_id, vector, replaced_id)
        return StoreResult(
            entry_id=format_entry_id(entry_id), replaced=replaced_id is not None,
            expires_at=record.expires_at, resolved_version=job.key.version,
        )

    def run(self, script: str, keys: list[str], args: list[Any], *, action: str, wait: bool = False) -> Any:
        """Run a change script on the shard of keys[0]; with wait and redis_wait_replicas,
        return only once that many replicas have it (WAIT on the same connection)."""
        replicas = self._settings.redis_wait_replicas if wait else 0
        with redis_errors(action):
            if not replicas:
                return self.client.eval(script, len(keys), *keys, *args)
            node = self.client.get_node_from_key(keys[0])
            pipe = self.client.get_redis_connection(node).pipeline(transaction=False)
            pipe.eval(script, len(keys), *keys, *args)
            pipe.execute_command("WAIT", replicas, self._settings.redis_wait_timeout_ms)
            try:
                result, acknowledged = pipe.execute()
            except Exception:
                self.client.nodes_manager.initialize()  # a failover or a moved slot: find the primaries again
                raise
        if acknowledged < replicas:
            raise UnavailableError(
                f"only {acknowledged} of {replicas} replicas acknowledged the write within "
                f"{self._settings.redis_wait_timeout_ms} ms (redis_wait_replicas); it is on the primary alone"
            )
        return result

    def amend(self, key: PartitionKey, entry_id: int, change: Callable[[EntryRecord], None] | None) -> bool:
        """A verdict's change applied to the entry (compare-and-set); False when the entry
        (or, without a change, its partition) is gone."""
        keys = PartitionKeys.of(key)
        if change is None:
            with redis_errors("reads a partition"):
                return self.client.hget(keys.meta, "live") == b"1"
        for _ in range(8):  # a concurrent verdict on the same entry: read it again
            with redis_errors("reads an entry"):
                old = self.client.get(keys.entry(entry_id))
            if old is None:
                return False
            new = EntryRecord.FromString(old)
            change(new)
            if self.run(scripts.AMEND, [keys.entry(entry_id)], [old, new.SerializeToString()], action="amends an entry"):
                return True
        return False

    def remove(self, keys: PartitionKeys, entry_ids: Sequence[int], reason: str) -> tuple[int, int, int]:
        """(removed, found expired, found evicted) of these entries; `reason` counts the removed."""
        totals = [0, 0, 0]
        for start in range(0, len(entry_ids), REMOVE_CHUNK):
            chunk = list(entry_ids[start:start + REMOVE_CHUNK])
            counts = self.run(
                scripts.REMOVE, [keys.meta, keys.ids, keys.vectors, keys.exact, keys.log],
                [keys.entry_prefix, LOG_MAX_LEN, reason, repr(self._clock()), *chunk], action="removes entries",
            )
            totals = [a + int(b) for a, b in zip(totals, counts, strict=True)]
            partition = self._partitions.get(keys.tag)
            if partition is not None:
                partition.forget(chunk)
        return totals[0], totals[1], totals[2]

    def matching(self, key: PartitionKey, metadata_match: Mapping[str, str]) -> list[int]:
        keys, matching, cursor = PartitionKeys.of(key), [], 0
        wanted = dict(metadata_match).items()
        with redis_errors("reads entries to invalidate"):
            while True:
                cursor, page = self.client.hscan(keys.ids, cursor, count=REMOVE_CHUNK)
                ids = [int(i) for i in page]
                values = self.client.execute_command("MGET", *[keys.entry(i) for i in ids]) if ids else []
                for entry_id, value in zip(ids, values, strict=True):
                    if value is not None and wanted <= dict(EntryRecord.FromString(value).metadata).items():
                        matching.append(entry_id)
                if not cursor:
                    return matching

    def clear(self, key: PartitionKey) -> int:
        """Empty a partition: at once for Lookups everywhere (records deleted before this
        returns), then its registry entry stays, not live, with its counters."""
        keys = PartitionKeys.of(key)
        old = keys.old(secrets.token_hex(8))
        self.run(
            scripts.CLEAR, [keys.meta, keys.ids, keys.vectors, keys.exact, keys.log, old, keys.olds], [LOG_MAX_LEN],
            action="invalidates a partition",
        )
        partition = self._partitions.get(keys.tag)
        if partition is not None:
            partition.clear_local()
        return self.drop_old(keys, old)

    def drop_old(self, keys: PartitionKeys, old: str) -> int:
        deleted, cursor = 0, 0
        with redis_errors("deletes invalidated entries"):
            while True:  # HSCAN of a hash that shrinks under it: go round until it is gone
                cursor, page = self.client.hscan(old, cursor, count=REMOVE_CHUNK)
                if page:
                    deleted += int(self.run(
                        scripts.DROP_OLD, [keys.meta, old, keys.olds], [keys.entry_prefix, *page],
                        action="deletes invalidated entries",
                    ))
                if not cursor and not self.client.exists(old):
                    return deleted
