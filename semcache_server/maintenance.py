"""Background upkeep: writing hit counts, LFU scores, sliding expiries and counters back
to LMDB every stats_flush_interval_seconds, and sweeping expired entries."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from semcache_server import ttl
from semcache_server.errors import StorageFullError
from semcache_server.ledger import Ledger, PendingWrites
from semcache_server.partition_registry import PartitionRegistry
from semcache_server.settings import Settings
from semcache_server.store import Store
from semcache_server.v1.records_pb2 import EntryHits, EntryRecord
from semcache_server.writes import FULL_RETRIES, Writer

log = logging.getLogger("semcache")


class Maintenance:
    def __init__(
        self,
        store: Store,
        registry: PartitionRegistry,
        ledger: Ledger,
        writer: Writer,
        settings: Settings,
        hits_table_from_entry_id: int,
    ) -> None:
        self.store = store
        self.registry = registry
        self.ledger = ledger
        self.writer = writer
        self.settings = settings
        # Entries from this id on were stored by a version that keeps hit counts in
        # entry_hits only; older ones may still carry them in their record.
        self.hits_table_from_entry_id = hits_table_from_entry_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dropped: set[int] = set()  # damaged entries already removed

    def start(self) -> None:
        """Start the background thread that flushes hit counts and sweeps expired entries."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="semcache-maintenance", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        next_sweep = time.monotonic() + self.settings.sweep_interval_seconds
        while not self._stop.wait(self.settings.stats_flush_interval_seconds):
            try:
                self.flush_stats_making_room()
                if time.monotonic() >= next_sweep:
                    self.sweep_expired()
                    next_sweep = time.monotonic() + self.settings.sweep_interval_seconds
            except StorageFullError as e:  # the next round retries; Stores evict meanwhile
                log.warning("maintenance round deferred: %s", e)
            except Exception:  # keep maintaining; the next round retries
                log.exception("maintenance round failed")

    def flush_stats_making_room(self) -> None:
        """flush_stats; where LMDB is full, evict the least valuable entries (as a Store
        would) and try again, up to FULL_RETRIES times. StorageFullError if there is still
        no room (nothing left to evict, or still full)."""
        for _ in range(FULL_RETRIES):
            try:
                self.flush_stats()
                return
            except StorageFullError:
                if not self.writer.evict_for_space():
                    raise
        self.flush_stats()

    def drop_damaged(self) -> int:
        """Remove the entries found damaged since the last round from LMDB, every index
        and the policy. Returns how many."""
        with self.writer.write_lock:
            damaged = sorted(self.store.corrupt_entry_ids - self._dropped)
            if not damaged:
                return 0
            with self.store.write() as txn:
                for entry_id in damaged:
                    self.store.drop_damaged(txn, entry_id)
            ids = np.asarray(damaged, dtype=np.int64)
            for partition in self.registry.all():  # its partition is unknown: the record does not parse
                partition.index.remove(ids)
            with self.ledger.lock:
                for entry_id in damaged:
                    self.ledger.policy.remove(entry_id)
            self._dropped.update(damaged)
        log.warning("dropped %d damaged entries", len(damaged))
        return len(damaged)

    def sweep_expired(self) -> int:
        """Remove every entry whose TTL has run out (and any found damaged). Returns how many expired."""
        self.drop_damaged()
        self.flush_stats()  # sliding-TTL extensions reach LMDB first
        now = self.writer.clock()
        with self.store.read() as txn:
            expired = list(self.store.iter_expired(txn, now))
        return self.writer.delete_entry_ids(
            expired, reason="expirations", still=lambda i, r: self.ledger.is_expired(i, r, now)
        )

    def flush_stats(self) -> None:
        """Write pending hit counts, LFU scores, sliding expiries and counters to LMDB."""
        partitions = self.registry.all()
        pending = self.ledger.take_pending(partitions)
        if not pending:
            return
        try:
            self._write(pending)
        except BaseException:
            self.ledger.put_back(pending, partitions)
            raise
        self.ledger.settle_expiries(pending.expiries)

    def _write(self, pending: PendingWrites) -> None:
        with self.writer.write_lock, self.store.write() as txn:
            for entry_id, (count, last_hit_at, score) in pending.hits.items():
                hits = self._entry_hits(txn, entry_id)
                if hits is None:  # deleted since
                    continue
                hits.hit_count += count
                hits.last_hit_at = last_hit_at
                if score is not None:
                    hits.lfu_score = score
                self.store.put_hits(txn, entry_id, hits)
            for entry_id, expiry in pending.expiries.items():  # the expiry index moves too: rewrite the entry
                old = self.store.get_entry(txn, entry_id)
                if old is None or not ttl.extension_applies(old.expires_at, expiry):
                    continue
                new = EntryRecord.FromString(old.SerializeToString())
                new.expires_at = expiry
                self.store.update_entry(txn, entry_id, old, new)
            for partition_id, counters in pending.partitions:
                stored = self.store.get_partition(txn, partition_id)
                if stored is None or stored.dropping:
                    continue
                stored.MergeFrom(counters)
                self.store.put_partition(txn, partition_id, stored)
            self.store.put_meta(txn, "totals", pending.totals.hex())

    def _entry_hits(self, txn, entry_id: int) -> EntryHits | None:
        """The entry's hit statistics; seeded from its record when a version before the
        entry_hits table stored them there. None when the entry is gone."""
        hits = self.store.get_hits(txn, entry_id)
        if hits is not None:
            return hits
        if entry_id >= self.hits_table_from_entry_id:  # its record never held counts: skip reading it
            return EntryHits() if self.store.has_entry(txn, entry_id) else None
        record = self.store.get_entry(txn, entry_id)
        if record is None:
            return None
        return EntryHits(hit_count=record.hit_count, last_hit_at=record.last_hit_at, lfu_score=record.lfu_score)
