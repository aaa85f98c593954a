"""A frontend's replica of one partition: a FAISS index of its vectors, loaded from Redis
on first use and kept current by the partition's change log (a Redis Stream).

Every change script appends one log entry with the next `seq`; a replica applies them in
order, and one that finds a gap (the log was trimmed past it) loads the partition again.
Searches never wait for either: the index has its own lock, and a reload or a `clear`
swaps in a whole new index.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from semcache_server.decision import Candidate
from semcache_server.key_fingerprint import CandidateFilter
from semcache_server.partition import PartitionKey
from semcache_server.redis_backend.connection import redis_errors
from semcache_server.redis_backend.keys import PartitionKeys
from semcache_server.settings import Settings
from semcache_server.v1.records_pb2 import EntryRecord
from semcache_server.vector_index import VectorIndex, widening_search

log = logging.getLogger("semcache")

# Vectors read per HSCAN page while a partition loads.
LOAD_PAGE = 2000


class RedisPartition:
    """Implements `semcache_server.storage.PartitionHandle` for the redis backend."""

    def __init__(self, key: PartitionKey, settings: Settings, dimension: int) -> None:
        self.key = key
        self.keys = PartitionKeys.of(key)
        self._settings = settings
        self._dimension = dimension
        self.index = self._new_index()
        self.seq = 0  # the last change applied
        self.last_log_id = b"0-0"
        self.lock = threading.Lock()  # applying changes, loading
        self.loaded_seconds = 0.0

    def _new_index(self) -> VectorIndex:
        return VectorIndex(
            self._dimension, ivf_min_entries=self._settings.ivf_min_entries, ivf_nprobe=self._settings.ivf_nprobe
        )

    def load(self, client: Any) -> None:
        """Read every vector of the partition into a new index; the log is applied from
        the last entry before the scan on (changes during the scan apply twice, harmlessly)."""
        started = time.monotonic()
        with self.lock:
            last = client.xrevrange(self.keys.log, count=1)
            last_id, seq = (last[0][0], int(last[0][1][b"seq"])) if last else (b"0-0", 0)
            index = self._new_index()
            cursor: int = 0
            while True:
                cursor, page = client.hscan(self.keys.vectors, cursor, count=LOAD_PAGE)
                if page:
                    ids = np.fromiter((int(i) for i in page), dtype=np.int64, count=len(page))
                    index.add(ids, np.frombuffer(b"".join(page.values()), dtype=np.float32).reshape(len(page), -1))
                if not cursor:
                    break
            self.index, self.seq, self.last_log_id = index, seq, last_id
        self.loaded_seconds = time.monotonic() - started

    def apply(self, entries: Sequence[tuple[bytes, dict[bytes, bytes]]], client: Any) -> bool:
        """Apply change-log entries read after last_log_id, in order (the vectors of a run of
        adds read in one HMGET). False: the log has a gap here (trimmed past this replica),
        and the partition must be loaded again. Where reading vectors fails, the replica
        stays at the change before them, to read them again next time."""
        with self.lock:
            adds: list[int] = []
            before_adds = (self.seq, self.last_log_id)
            for log_id, fields in entries:
                seq = int(fields[b"seq"])
                if seq <= self.seq:
                    continue
                if seq != self.seq + 1:
                    log.warning("partition %s: change log jumped from %d to %d; loading it again", self.key, self.seq, seq)
                    self._add_from_redis(adds, client, before_adds)
                    return False
                op = fields[b"op"]
                if op == b"add":
                    if not adds:
                        before_adds = (self.seq, self.last_log_id)
                    adds.append(int(fields[b"id"]))
                else:
                    self._add_from_redis(adds, client, before_adds)
                    if op == b"del":
                        self.index.remove(np.asarray([int(fields[b"id"])], dtype=np.int64))
                    elif op == b"clear":
                        self.index = self._new_index()
                self.seq, self.last_log_id = seq, log_id
            self._add_from_redis(adds, client, before_adds)
        return True

    def _add_from_redis(self, ids: list[int], client: Any, before: tuple[int, bytes]) -> None:
        if not ids:
            return
        try:
            vectors = client.hmget(self.keys.vectors, ids)
        except BaseException:
            self.seq, self.last_log_id = before
            raise
        found = [(i, v) for i, v in zip(ids, vectors, strict=True) if v is not None]  # None: removed since
        ids.clear()
        if found:
            self.index.add(
                np.asarray([i for i, _ in found], dtype=np.int64), np.frombuffer(b"".join(v for _, v in found), dtype=np.float32),
            )

    def add_local(self, entry_id: int, vector: np.ndarray, replaced: int | None) -> None:
        """This frontend's own Store, searchable here before its log entry comes back."""
        with self.lock:
            if replaced is not None:
                self.index.remove(np.asarray([replaced], dtype=np.int64))
            self.index.add(np.asarray([entry_id], dtype=np.int64), vector.reshape(1, -1))

    def clear_local(self) -> None:
        with self.lock:
            self.index = self._new_index()

    def forget(self, entry_ids: Sequence[int]) -> None:
        """Records Redis no longer has (expired, evicted, removed): out of this replica."""
        if entry_ids:
            self.index.remove(np.asarray(entry_ids, dtype=np.int64))


class RedisCandidates:
    """Live candidates of a partition for one vector, best first: the replica's nearest
    ids, each read from Redis; an id whose record is gone is a miss and leaves the replica."""

    def __init__(self, client: Any, partition: RedisPartition, vector: np.ndarray, match: CandidateFilter) -> None:
        self._client = client
        self._partition = partition
        self._vector = vector
        self._match = match
        self.search_seconds: list[float] = []

    def __iter__(self) -> Iterator[Candidate]:
        return self._live()

    def __enter__(self) -> RedisCandidates:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _live(self) -> Iterator[Candidate]:
        partition = self._partition
        for found in widening_search(partition.index, self._vector, self.search_seconds):
            if not found:
                continue
            with redis_errors("reads candidates"):
                values = self._client.execute_command("MGET", *[partition.keys.entry(i) for i, _ in found])
            partition.forget([entry_id for (entry_id, _), value in zip(found, values, strict=True) if value is None])
            for (entry_id, similarity), value in zip(found, values, strict=True):
                if value is None:
                    continue
                record = EntryRecord.FromString(value)
                if self._match.accepts(record):
                    yield Candidate(entry_id, record, similarity)
