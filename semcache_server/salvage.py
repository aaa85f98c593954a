"""`semcache verify --salvage-to NEW_DIR`: copy every intact entry of a data dir whose
LMDB pages are damaged (so that the server, and `--repair`, cannot open it) into a new
data dir, rebuilding the index tables from the entries.

The damaged file is opened read-only and walked table by table. Where a walk hits a
damaged page, it jumps past it: the entry and partition tables are keyed by 8-byte
ids, so the walk resumes at the next id a seek can reach (probing ever larger steps).
Each entry is checked (checksum, parse) and kept only if its partition survived. The
exact-tier, per-partition and expiry rows are rebuilt from the entries, as the server
writes them; meta (counters, the embedding model, thresholds) is copied as it reads.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
from google.protobuf.message import DecodeError

from semcache_server.data_dir import check_not_truncated, lock_data_dir
from semcache_server.errors import ConfigError
from semcache_server.record_checksums import checksum_ok
from semcache_server.store import ENTRY_ID_COUNTER, Store, pack_id, unpack_id
from semcache_server.v1.records_pb2 import EntryHits, EntryRecord, PartitionRecord

_TABLES = ("meta", "partitions", "entries", "entry_hits")
_MAX_PROBE_STEP = 1 << 40
_LINEAR_PROBES = 64


def salvage(data_dir: str, out_dir: str) -> dict[str, object]:
    source = Path(data_dir)
    data_file = source / "cache.lmdb" / "data.mdb"
    if not data_file.is_file():
        raise ConfigError(f"no semcache data in {data_dir!r} (no {data_file})")
    target = Path(out_dir)
    if (target / "cache.lmdb").exists():
        raise ConfigError(f"{out_dir!r} already holds semcache data; salvage into a new, empty directory")
    lock = lock_data_dir(source)  # no server may be running on it
    report: dict[str, object] = {"skipped_damaged_regions": 0}
    try:
        env = lmdb.open(str(source / "cache.lmdb"), readonly=True, lock=False, max_dbs=16, subdir=True)
    except lmdb.Error as e:
        os.close(lock)
        raise ConfigError(f"LMDB cannot open {str(data_file)!r} at all ({e}); restore it from a backup") from None
    try:
        try:
            check_not_truncated(env, data_file)
        finally:
            env.close()
        read = _read_tables(source / "cache.lmdb", report)
    finally:
        os.close(lock)
    meta, partitions, entries, hits = read
    kept = {eid: rec for eid, rec in entries.items() if rec.partition_id in partitions}
    report.update({
        "partitions": len(partitions), "entries_read": len(entries), "entries_kept": len(kept),
        "entries_without_partition": len(entries) - len(kept),
    })
    out = Store(target, max_map_bytes=max(2 * data_file.stat().st_size, 64 << 20), sync_writes=True)
    try:
        with out.write() as txn:
            for name, value in meta.items():
                out.put_raw_meta(txn, name, value)
            top = max(kept, default=0)
            if out.last_id(txn, ENTRY_ID_COUNTER) < top:
                out.put_raw_meta(txn, ENTRY_ID_COUNTER.encode(), pack_id(top))
            for partition_id, partition in partitions.items():
                out.put_partition(txn, partition_id, partition)
            for entry_id, record in kept.items():
                out.put_entry(txn, entry_id, record)
                if entry_id in hits:
                    out.put_hits(txn, entry_id, hits[entry_id])
    finally:
        out.close()
    return report


def _read_tables(
    lmdb_dir: Path, report: dict[str, object],
) -> tuple[dict[bytes, bytes], dict[int, PartitionRecord], dict[int, EntryRecord], dict[int, EntryHits]]:
    meta: dict[bytes, bytes] = {}
    partitions: dict[int, PartitionRecord] = {}
    entries: dict[int, EntryRecord] = {}
    hits: dict[int, EntryHits] = {}
    damaged = [0]
    for key, value in _walk(lmdb_dir, "meta", by_id=False, damaged=damaged):
        meta[key] = value
    for key, value in _walk(lmdb_dir, "partitions", by_id=True, damaged=damaged):
        if (record := _parse(PartitionRecord, value)) is not None and not record.dropping:
            partitions[unpack_id(key)] = record
    for key, value in _walk(lmdb_dir, "entries", by_id=True, damaged=damaged):
        record = _parse(EntryRecord, value) if checksum_ok(value) else None
        if record is None:
            report["damaged_records"] = int(report.get("damaged_records", 0)) + 1  # type: ignore[call-overload]
        else:
            entries[unpack_id(key)] = record
    for key, value in _walk(lmdb_dir, "entry_hits", by_id=True, damaged=damaged):
        if (row := _parse(EntryHits, value)) is not None:
            hits[unpack_id(key)] = row
    report["skipped_damaged_regions"] = damaged[0]
    return meta, partitions, entries, hits


def _parse(kind: Any, raw: bytes) -> Any:
    try:
        return kind.FromString(raw)
    except (DecodeError, ValueError):
        return None


def _walk(lmdb_dir: Path, table: str, *, by_id: bool, damaged: list[int]) -> Iterator[tuple[bytes, bytes]]:
    """Every readable row of a table. LMDB aborts the process (a C assertion) on some
    damaged pages, so a child process reads; where one dies, the next resumes past the
    last row read, probing ever larger id steps until a seek lands beyond the damage."""
    start: int | None = 0 if by_id else None
    last: int | None = None
    step = 1
    while True:
        rows, finished = _read_in_child(lmdb_dir, table, start)
        for key, value in rows:
            yield key, value
            if by_id and len(key) == 8:
                last = unpack_id(key)
        if finished:
            return
        damaged[0] += 1 if rows or start == 0 else 0
        if not by_id:
            return  # names, not ids: no way to seek past the damage
        if rows:
            step = 1
        else:  # one id at a time past the damage, so no readable row is skipped, then faster
            step = step + 1 if step < _LINEAR_PROBES else step * 2
            if step > _MAX_PROBE_STEP:
                return
        start = (last if last is not None else -1) + step


def _read_in_child(lmdb_dir: Path, table: str, start: int | None) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The rows a child read from `start` on (an id, or None: the first row), and whether
    it reached the end of the table (False: it died on a damaged page)."""
    command = [sys.executable, "-m", "semcache_server.salvage", str(lmdb_dir), table, "" if start is None else str(start)]
    child = subprocess.run(command, capture_output=True, timeout=3600)
    rows, data, at = [], child.stdout, 0
    while at + 8 <= len(data):
        key_size, value_size = _FRAME.unpack_from(data, at)
        end = at + 8 + key_size + value_size
        if end > len(data):
            break
        rows.append((data[at + 8:at + 8 + key_size], data[at + 8 + key_size:end]))
        at = end
    return rows, child.returncode == 0 and data.endswith(_END)


def walk_in_child(lmdb_dir: Path) -> bool:
    """Whether every table can be walked end to end without LMDB aborting (in a child
    process, which is all that dies if it does)."""
    for table in (*_TABLES, "partition_names", "exact", "by_partition", "expiry"):
        command = [sys.executable, "-m", "semcache_server.salvage", str(lmdb_dir), table, "", "check"]
        if subprocess.run(command, capture_output=True, timeout=3600).returncode != 0:
            return False
    return True


def _child_main(lmdb_dir: str, table: str, start: str, mode: str = "read") -> None:
    """Write (key size, value size, key, value) frames to stdout, from `start` on, then
    _END; with mode "check", only walk."""
    out = sys.stdout.buffer
    env = lmdb.open(lmdb_dir, readonly=True, lock=False, max_dbs=16, subdir=True)
    with env.begin() as txn:
        try:
            db = env.open_db(table.encode(), txn=txn, create=False)
        except lmdb.Error:
            out.write(_END)
            return
        cursor = txn.cursor(db=db)
        positioned = cursor.set_range(pack_id(int(start))) if start else cursor.first()
        while positioned:
            key, value = bytes(cursor.key()), bytes(cursor.value())
            if mode != "check":
                out.write(_FRAME.pack(len(key), len(value)) + key + value)
                out.flush()
            positioned = cursor.next()
    out.write(_END)
    out.flush()


_FRAME = struct.Struct("<II")
_END = _FRAME.pack(0xFFFFFFFF, 0xFFFFFFFF)

if __name__ == "__main__":
    try:
        _child_main(*sys.argv[1:5])
    except lmdb.Error:
        sys.exit(3)
