"""Removing entries on request: Delete, Invalidate (a partition, every version, a whole
namespace, or by metadata), and purging dropped or retired partitions in chunks."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Mapping, Sequence

from semcache_server.partition import PartitionKey
from semcache_server.partition_registry import LivePartition, PartitionRegistry
from semcache_server.store import Store
from semcache_server.v1.records_pb2 import EntryRecord
from semcache_server.writes import DELETE_CHUNK, Writer

log = logging.getLogger("semcache")


class Invalidator:
    def __init__(self, store: Store, registry: PartitionRegistry, writer: Writer) -> None:
        self.store = store
        self.registry = registry
        self.writer = writer
        self._purges: list[threading.Thread] = []
        self._purges_lock = threading.Lock()

    def delete(self, key: PartitionKey, entry_id: int) -> bool:
        """Remove one entry of this partition; False when there is no such entry in it."""
        partition = self.registry.get(key)
        if partition is None:
            return False
        return self.writer.delete_entry_ids([entry_id], reason=None, still=lambda _, r: r.partition_id == partition.id) == 1

    def invalidate(
        self,
        key: PartitionKey,
        *,
        all_versions: bool = False,
        whole_namespace: bool = False,
        metadata_match: Mapping[str, str] | None = None,
    ) -> int:
        """Remove every entry in a scope; with metadata_match only those whose metadata has
        every given pair. Returns how many entries were removed."""
        targets = self.registry.in_scope(key, all_versions=all_versions, whole_namespace=whole_namespace)
        if not metadata_match:
            return sum(self._drop_partition(p) for p in targets)
        match = dict(metadata_match)

        def matches(_: int, record: EntryRecord) -> bool:
            return all(record.metadata.get(k) == v for k, v in match.items())

        removed = 0
        for partition in targets:
            with self.store.read() as txn:
                ids = [
                    entry_id for entry_id in self.store.iter_partition_entry_ids(txn, partition.id)
                    if (record := self.store.get_entry(txn, entry_id)) is not None and matches(entry_id, record)
                ]
            removed += self.writer.delete_entry_ids(ids, reason="invalidations", still=matches)
        return removed

    def _drop_partition(self, partition: LivePartition) -> int:
        with self.writer.write_lock:
            if self.registry.get_by_id(partition.id) is not partition:
                return 0  # dropped concurrently
            with self.store.write() as txn:
                self.store.mark_partition_dropping(txn, partition.id)
            # Unreachable from here on: lookups miss at once, a Store starts a new partition.
            self.registry.unpublish(partition)
        return self.purge_partition(partition.id)

    def retire(self, retired: Sequence[LivePartition]) -> None:
        """Versions retired by a Store (already unreachable): purge them in the background."""
        for old in retired:
            log.info("retiring partition %s: over max_versions_per_model", old.key)
            self._purge_in_background(old.id)

    def _purge_in_background(self, partition_id: int) -> None:
        thread = threading.Thread(target=self.purge_partition, args=(partition_id,), name="semcache-purge", daemon=True)
        with self._purges_lock:
            self._purges = [t for t in self._purges if t.is_alive()]
            self._purges.append(thread)
        thread.start()

    def wait_for_purges(self) -> None:
        """Block until retired partitions are fully removed from LMDB."""
        with self._purges_lock:
            purges = list(self._purges)
        for thread in purges:
            thread.join()

    def purge_partition(self, partition_id: int) -> int:
        """Remove a dropping partition's entries in chunks, then the partition itself."""
        removed = 0
        while True:
            with self.writer.write_lock:
                deleted: list[tuple[int, EntryRecord]] = []
                with self.store.write() as txn:
                    chunk = list(itertools.islice(self.store.iter_partition_entry_ids(txn, partition_id), DELETE_CHUNK))
                    for entry_id in chunk:
                        record = self.store.get_entry(txn, entry_id)
                        if record is not None:
                            self.store.delete_entry(txn, entry_id, record)
                            deleted.append((entry_id, record))
                        else:  # damaged (or gone): its row must not bring the purge back to it
                            self.store.drop_damaged(txn, entry_id)
                            self.store.delete_partition_row(txn, partition_id, entry_id)
                    if not chunk:
                        self.store.delete_partition(txn, partition_id)
                self.writer.forget_locked(deleted, "invalidations")
            removed += len(chunk)
            if not chunk:
                return removed
