"""LMDB storage: the source of truth. Every FAISS index is derived from it.

Named databases (ids are 8-byte big-endian, so keys sort by id):

    meta           name                       -> value (counters, schema, embedding model)
    partitions     partition_id               -> PartitionRecord
    partition_names sha256(namespace,model,version) -> partition_id
    entries        entry_id                   -> EntryRecord
    entry_hits     entry_id                   -> EntryHits (hit count, last hit, LFU score)
    exact          partition_id + sha256(normalized query) -> entry_id
    by_partition   partition_id + entry_id    -> ""
    expiry         expires_at_ms + entry_id   -> ""
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import lmdb
from google.protobuf.message import DecodeError

from semcache_server.data_dir import check_not_truncated, damaged_data_error, lock_data_dir, warn_if_map_exceeds_volume
from semcache_server.errors import ConfigError, StorageFullError
from semcache_server.key_fingerprint import record_exact_suffix
from semcache_server.map_reserve import MapReserve
from semcache_server.partition import PartitionKey
from semcache_server.record_checksums import checksum_ok, encode_entry
from semcache_server.v1.records_pb2 import EntryHits, EntryRecord, PartitionRecord

SCHEMA_VERSION = b"1"
# The meta counter entry ids come from.
ENTRY_ID_COUNTER = "next_entry_id"
# A failed LMDB write while the data volume has less free space than this is taken for
# a full volume: LMDB reports the ENOSPC of its page writes as EIO.
_VOLUME_FULL_BYTES = 16 << 20
_MAP_FULL = "storage is full (max_map_bytes reached); raise max_map_bytes or lower the budgets"
log = logging.getLogger("semcache")
_U64 = struct.Struct(">Q")


def pack_id(value: int) -> bytes:
    return _U64.pack(value)


def unpack_id(data: bytes) -> int:
    return _U64.unpack(data)[0]


# Transactions are opened without buffers=True, so LMDB hands out bytes, never memoryviews;
# these say so to the type checker.
def _get(txn: lmdb.Transaction, key: bytes, db: lmdb._Database) -> bytes | None:
    return cast("bytes | None", txn.get(key, db=db))


def _items(cursor: lmdb.Cursor) -> Iterator[tuple[bytes, bytes]]:
    return cast("Iterator[tuple[bytes, bytes]]", iter(cursor))


def _keys(cursor: lmdb.Cursor) -> Iterator[bytes]:
    return cast("Iterator[bytes]", cursor.iternext(keys=True, values=False))


def _exact_key(partition_id: int, normalized_query: str, key_suffix: str = "") -> bytes:
    """key_suffix: the request key's part of it (semcache_server/key_fingerprint.py); "" for a plain one."""
    text = normalized_query + "\x00" + key_suffix if key_suffix else normalized_query
    return pack_id(partition_id) + hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _expiry_key(expires_at: float, entry_id: int) -> bytes:
    return pack_id(int(expires_at * 1000)) + pack_id(entry_id)


class Store:
    """An LMDB environment with semcache's schema. Transactions are used from one thread each."""

    def __init__(self, data_dir: str | Path, *, max_map_bytes: int, sync_writes: bool = True) -> None:
        path = Path(data_dir)
        self._path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
            self._lock_fd = lock_data_dir(path)
        except OSError as e:
            raise ConfigError(f"cannot use data dir {str(path)!r}: {e}") from None
        try:
            # The map is only address space: the file grows as data is written, up to
            # max_map_bytes, so the ceiling can be mapped from the start.
            self._env = lmdb.open(
                str(path / "cache.lmdb"),
                map_size=max_map_bytes,
                subdir=True,
                max_dbs=16,
                max_readers=512,
                sync=sync_writes,
                metasync=sync_writes,
                readahead=False,
            )
            check_not_truncated(self._env, path / "cache.lmdb" / "data.mdb")
            self._meta = self._env.open_db(b"meta")
            self._partitions = self._env.open_db(b"partitions")
            self._partition_names = self._env.open_db(b"partition_names")
            self._entries = self._env.open_db(b"entries")
            self._entry_hits = self._env.open_db(b"entry_hits")
            self._exact = self._env.open_db(b"exact")
            self._by_partition = self._env.open_db(b"by_partition")
            self._expiry = self._env.open_db(b"expiry")
            named = (self._meta, self._partitions, self._partition_names, self._entries, self._entry_hits)
            self.reserve = MapReserve(self._env, (*named, self._exact, self._by_partition, self._expiry), max_map_bytes)
        except (OSError, lmdb.Error) as e:
            os.close(self._lock_fd)
            raise ConfigError(f"cannot open the LMDB store in data dir {str(path)!r}: {e}") from None
        except ConfigError:
            self._env.close()
            os.close(self._lock_fd)
            raise
        warn_if_map_exceeds_volume(self._path, max_map_bytes)
        # Damaged entry records seen (never served; dropped by drop_damaged).
        self.corrupt_entry_ids: set[int] = set()
        try:
            with self.write() as txn:
                schema = _get(txn, b"schema_version", db=self._meta)
                if schema is None:
                    txn.put(b"schema_version", SCHEMA_VERSION, db=self._meta)
                # Entries from this id on carry a checksum; older ones were written without.
                first = self.get_meta(txn, "checksums_from_entry_id")
                if first is None:
                    first = str(self.last_id(txn, ENTRY_ID_COUNTER) + 1)
                    self.put_meta(txn, "checksums_from_entry_id", first)
                self.checksums_from_entry_id = int(first)
        except (lmdb.Error, ValueError) as e:
            self.close()
            raise damaged_data_error(str(path), e) from None
        if schema is not None and schema != SCHEMA_VERSION:
            self.close()
            raise ConfigError(
                f"data dir {str(path)!r} has schema {schema.decode()!r}; this server reads {SCHEMA_VERSION.decode()!r}"
            )

    def close(self) -> None:
        self._env.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # the data dir is free for another server
            self._lock_fd = -1

    # -- transactions -----------------------------------------------------

    def read(self) -> lmdb.Transaction:
        return self._env.begin(write=False)

    @contextlib.contextmanager
    def write(self, *, keep_delete_reserve: bool = False) -> Iterator[lmdb.Transaction]:
        """A write transaction, committed (and fsynced, with sync_writes) on success.
        StorageFullError when the map is at max_map_bytes or the data volume is full:
        either way nothing of the transaction is stored, and evicting makes room
        (LMDB reuses the pages it frees). keep_delete_reserve (Stores): also where the
        transaction would eat into the pages deletes need (map_reserve.py)."""
        try:
            with self._env.begin(write=True) as txn:
                yield txn
                if keep_delete_reserve and self.reserve.would_break(txn):
                    raise StorageFullError(_MAP_FULL)
        except lmdb.MapFullError:
            raise StorageFullError(_MAP_FULL) from None
        except lmdb.Error as e:
            free_bytes = self.volume_free_bytes()
            if free_bytes >= _VOLUME_FULL_BYTES:
                raise
            raise StorageFullError(
                f"storage is full: the data volume has {free_bytes} bytes free ({e}); give it more space, "
                "or set max_map_bytes below its size so that the cache evicts before the volume fills"
            ) from None

    @contextlib.contextmanager
    def nested(self, parent: lmdb.Transaction) -> Iterator[lmdb.Transaction]:
        """A child of a write transaction: aborting it undoes only its own changes."""
        try:
            with self._env.begin(write=True, parent=parent) as txn:
                yield txn
        except lmdb.MapFullError:
            raise StorageFullError(_MAP_FULL) from None

    def volume_free_bytes(self) -> int:
        """Bytes an unprivileged process may still write on the data volume."""
        stat = os.statvfs(self._path)
        return stat.f_bavail * stat.f_frsize

    # -- meta ---------------------------------------------------------------

    def get_meta(self, txn: lmdb.Transaction, name: str) -> str | None:
        value = _get(txn, name.encode(), db=self._meta)
        return None if value is None else value.decode()

    def put_meta(self, txn: lmdb.Transaction, name: str, value: str) -> None:
        txn.put(name.encode(), value.encode(), db=self._meta)

    def put_raw_meta(self, txn: lmdb.Transaction, name: bytes, value: bytes) -> None:
        txn.put(name, value, db=self._meta)

    def iter_meta(self, txn: lmdb.Transaction, prefix: str) -> Iterator[tuple[str, str]]:
        """(name, value) of the meta records whose name starts with prefix."""
        cursor = txn.cursor(db=self._meta)
        found = cursor.set_range(prefix.encode())
        names = itertools.takewhile(lambda item: bytes(item[0]).startswith(prefix.encode()), cursor if found else ())
        return ((bytes(name).decode(), bytes(value).decode()) for name, value in names)

    def delete_meta(self, txn: lmdb.Transaction, name: str) -> None:
        txn.delete(name.encode(), db=self._meta)

    def last_id(self, txn: lmdb.Transaction, counter: str) -> int:
        """The last id next_id() gave out from this counter (0: none yet)."""
        raw = _get(txn, counter.encode(), db=self._meta)
        return 0 if raw is None else unpack_id(raw)

    def next_id(self, txn: lmdb.Transaction, counter: str) -> int:
        """A new id from a persistent counter; ids start at 1 and are never reused."""
        key = counter.encode()
        raw = _get(txn, key, db=self._meta)
        value = 1 if raw is None else unpack_id(raw) + 1
        txn.put(key, pack_id(value), db=self._meta)
        return value

    # -- partitions ---------------------------------------------------------

    def find_partition(self, txn: lmdb.Transaction, key: PartitionKey) -> int | None:
        raw = _get(txn, key.digest(), db=self._partition_names)
        return None if raw is None else unpack_id(raw)

    def put_partition(self, txn: lmdb.Transaction, partition_id: int, record: PartitionRecord) -> None:
        txn.put(pack_id(partition_id), record.SerializeToString(), db=self._partitions)
        if not record.dropping:
            key = PartitionKey(record.namespace, record.model, record.version)
            txn.put(key.digest(), pack_id(partition_id), db=self._partition_names)

    def get_partition(self, txn: lmdb.Transaction, partition_id: int) -> PartitionRecord | None:
        raw = _get(txn, pack_id(partition_id), db=self._partitions)
        return None if raw is None else PartitionRecord.FromString(raw)

    def mark_partition_dropping(self, txn: lmdb.Transaction, partition_id: int) -> PartitionRecord | None:
        """Make the partition unreachable by name; its entries are removed afterwards."""
        record = self.get_partition(txn, partition_id)
        if record is None:
            return None
        key = PartitionKey(record.namespace, record.model, record.version)
        txn.delete(key.digest(), db=self._partition_names)
        record.dropping = True
        txn.put(pack_id(partition_id), record.SerializeToString(), db=self._partitions)
        return record

    def delete_partition(self, txn: lmdb.Transaction, partition_id: int) -> None:
        record = self.get_partition(txn, partition_id)
        if record is not None and not record.dropping:
            key = PartitionKey(record.namespace, record.model, record.version)
            txn.delete(key.digest(), db=self._partition_names)
        txn.delete(pack_id(partition_id), db=self._partitions)

    def iter_partitions(self, txn: lmdb.Transaction) -> Iterator[tuple[int, PartitionRecord]]:
        for key, value in _items(txn.cursor(db=self._partitions)):
            yield unpack_id(key), PartitionRecord.FromString(value)

    # -- entries ------------------------------------------------------------

    def get_entry(self, txn: lmdb.Transaction, entry_id: int) -> EntryRecord | None:
        """The entry, or None when there is none, or when its record is damaged (then it
        is counted and logged once, and never served; see corrupt_entry_ids)."""
        raw = _get(txn, pack_id(entry_id), db=self._entries)
        return None if raw is None else self._decode_entry(entry_id, raw)

    def _decode_entry(self, entry_id: int, raw: bytes) -> EntryRecord | None:
        if entry_id >= self.checksums_from_entry_id and not checksum_ok(raw):
            self._damaged(entry_id, "its checksum does not match")
            return None
        try:
            return EntryRecord.FromString(raw)
        except DecodeError:
            self._damaged(entry_id, "it does not parse")
            return None

    def _damaged(self, entry_id: int, why: str) -> None:
        if entry_id not in self.corrupt_entry_ids:
            self.corrupt_entry_ids.add(entry_id)
            log.error(
                "entry %d in %s is damaged (%s): it is not served and will be dropped; "
                "run `semcache verify` on the data dir when the server is stopped",
                entry_id, self._path, why,
            )

    def raw_entry(self, txn: lmdb.Transaction, entry_id: int) -> bytes | None:
        """The entry's record as stored (serialized EntryRecord)."""
        raw = _get(txn, pack_id(entry_id), db=self._entries)
        return None if raw is None else bytes(raw)

    def has_entry(self, txn: lmdb.Transaction, entry_id: int) -> bool:
        """Whether the entry exists, without copying its record out of the map."""
        return txn.cursor(db=self._entries).set_key(pack_id(entry_id))

    def get_hits(self, txn: lmdb.Transaction, entry_id: int) -> EntryHits | None:
        raw = _get(txn, pack_id(entry_id), db=self._entry_hits)
        return None if raw is None else EntryHits.FromString(raw)

    def put_hits(self, txn: lmdb.Transaction, entry_id: int, hits: EntryHits) -> None:
        txn.put(pack_id(entry_id), hits.SerializeToString(), db=self._entry_hits)

    def count_orphan_hits(self, txn: lmdb.Transaction) -> int:
        """entry_hits rows whose entry is gone (for consistency checks)."""
        return sum(
            1 for key in _keys(txn.cursor(db=self._entry_hits))
            if _get(txn, key, db=self._entries) is None
        )

    def find_exact(self, txn: lmdb.Transaction, partition_id: int, normalized_query: str, key_suffix: str = "") -> int | None:
        raw = _get(txn, _exact_key(partition_id, normalized_query, key_suffix), db=self._exact)
        return None if raw is None else unpack_id(raw)

    def put_entry(self, txn: lmdb.Transaction, entry_id: int, record: EntryRecord) -> None:
        """Insert a new entry with all its index rows."""
        packed = pack_id(entry_id)
        txn.put(packed, encode_entry(record), db=self._entries)
        txn.put(pack_id(record.partition_id) + packed, b"", db=self._by_partition)
        if record.normalized_query:
            txn.put(_exact_key(record.partition_id, record.normalized_query, record_exact_suffix(record)), packed, db=self._exact)
        if record.expires_at:
            txn.put(_expiry_key(record.expires_at, entry_id), b"", db=self._expiry)

    def update_entry(self, txn: lmdb.Transaction, entry_id: int, old: EntryRecord, new: EntryRecord) -> None:
        """Rewrite an entry in place (a sliding expiry); partition and query must not change."""
        if old.expires_at != new.expires_at:
            if old.expires_at:
                txn.delete(_expiry_key(old.expires_at, entry_id), db=self._expiry)
            if new.expires_at:
                txn.put(_expiry_key(new.expires_at, entry_id), b"", db=self._expiry)
        txn.put(pack_id(entry_id), encode_entry(new), db=self._entries)

    def delete_entry(self, txn: lmdb.Transaction, entry_id: int, record: EntryRecord) -> None:
        """Remove an entry and every index row that points at it."""
        packed = pack_id(entry_id)
        txn.delete(packed, db=self._entries)
        txn.delete(packed, db=self._entry_hits)
        txn.delete(pack_id(record.partition_id) + packed, db=self._by_partition)
        if record.normalized_query:
            exact_key = _exact_key(record.partition_id, record.normalized_query, record_exact_suffix(record))
            # Only drop the exact row if it still points at this entry.
            if _get(txn, exact_key, db=self._exact) == packed:
                txn.delete(exact_key, db=self._exact)
        if record.expires_at:
            txn.delete(_expiry_key(record.expires_at, entry_id), db=self._expiry)

    def iter_partition_entry_ids(self, txn: lmdb.Transaction, partition_id: int) -> Iterator[int]:
        prefix = pack_id(partition_id)
        cursor = txn.cursor(db=self._by_partition)
        if not cursor.set_range(prefix):
            return
        for key in _keys(cursor):
            if not key.startswith(prefix):
                return
            yield unpack_id(key[8:])

    def iter_entries(self, txn: lmdb.Transaction) -> Iterator[tuple[int, EntryRecord]]:
        """Every intact entry; damaged ones are skipped (counted and logged)."""
        for key, value in _items(txn.cursor(db=self._entries)):
            entry_id = unpack_id(key)
            record = self._decode_entry(entry_id, value)
            if record is not None:
                yield entry_id, record

    def drop_damaged(self, txn: lmdb.Transaction, entry_id: int) -> None:
        """Remove a damaged entry's record and hit row (its index rows are found by
        scans and skipped, since they point at nothing)."""
        packed = pack_id(entry_id)
        txn.delete(packed, db=self._entries)
        txn.delete(packed, db=self._entry_hits)

    def verify_entries(self, txn: lmdb.Transaction) -> dict[str, int]:
        """Check every entry record (checksums, parsing); damaged ones join corrupt_entry_ids."""
        counts = {"entries": 0, "checked": 0, "unchecked_older": 0, "damaged": 0}
        for key, value in _items(txn.cursor(db=self._entries)):
            entry_id = unpack_id(key)
            counts["entries"] += 1
            counts["checked" if entry_id >= self.checksums_from_entry_id else "unchecked_older"] += 1
            if self._decode_entry(entry_id, value) is None:
                counts["damaged"] += 1
        return counts

    def repair(self, txn: lmdb.Transaction, entry_ids: set[int]) -> int:
        """Remove these (damaged) entries and every index row that points at them, found by
        scanning the index tables (a damaged record cannot say where its rows are)."""
        for entry_id in entry_ids:
            self.drop_damaged(txn, entry_id)
        stale: list[tuple[bytes, lmdb._Database]] = []
        for key in _keys(txn.cursor(db=self._by_partition)):
            if unpack_id(key[8:]) in entry_ids:
                stale.append((key, self._by_partition))
        for key in _keys(txn.cursor(db=self._expiry)):
            if unpack_id(key[8:]) in entry_ids:
                stale.append((key, self._expiry))
        for key, value in _items(txn.cursor(db=self._exact)):
            if unpack_id(value) in entry_ids:
                stale.append((key, self._exact))
        for key, db in stale:
            txn.delete(key, db=db)
        return len(entry_ids)

    def delete_partition_row(self, txn: lmdb.Transaction, partition_id: int, entry_id: int) -> None:
        """Drop one by_partition row (of an entry that is gone)."""
        txn.delete(pack_id(partition_id) + pack_id(entry_id), db=self._by_partition)

    def iter_expired(self, txn: lmdb.Transaction, now: float) -> Iterator[int]:
        """Entry ids whose expiry is at or before `now`, soonest first."""
        limit = int(now * 1000)
        for key in _keys(txn.cursor(db=self._expiry)):
            if unpack_id(key[:8]) > limit:
                return
            yield unpack_id(key[8:])
