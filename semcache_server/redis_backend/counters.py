"""Lookup and verdict counters of one frontend, added into Redis (HINCRBY on each
partition's hash, or on the totals hash for Lookups that found no partition) at every
stats flush; a flush that fails keeps them for the next one."""

from __future__ import annotations

import collections
import threading
from typing import Any

from semcache_server.entries import COUNTERS
from semcache_server.redis_backend.keys import TOTALS
from semcache_server.v1.records_pb2 import PartitionRecord


class PendingCounters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # partition hash key (None: the totals) -> counter -> delta
        self._deltas: dict[str | None, collections.Counter[str]] = {}
        self._saved_cost: dict[str | None, float] = {}
        self._last_used: dict[str, float] = {}

    def add(self, meta_key: str | None, name: str, count: int = 1) -> None:
        with self._lock:
            self._deltas.setdefault(meta_key, collections.Counter())[name] += count

    def lookup(self, meta_key: str | None, outcome: str, cost: float, now: float) -> None:
        with self._lock:
            counts = self._deltas.setdefault(meta_key, collections.Counter())
            counts["lookups"] += 1
            if outcome == "miss":
                counts["misses"] += 1
            else:
                counts["hits"] += 1
                counts[outcome] += 1
                if cost:
                    self._saved_cost[meta_key] = self._saved_cost.get(meta_key, 0.0) + cost
            if meta_key is not None:
                self._last_used[meta_key] = now

    def flush(self, client: Any) -> None:
        """Write the deltas; on failure they are put back and the error raised."""
        with self._lock:
            deltas, self._deltas = self._deltas, {}
            costs, self._saved_cost = self._saved_cost, {}
            last_used, self._last_used = self._last_used, {}
        if not (deltas or costs or last_used):
            return
        try:
            pipe = client.pipeline(transaction=False)
            for meta_key, counts in deltas.items():
                for name, delta in counts.items():
                    pipe.hincrby(meta_key or TOTALS, name, delta)
            for meta_key, cost in costs.items():
                pipe.hincrbyfloat(meta_key or TOTALS, "saved_cost", cost)
            for meta_key, when in last_used.items():
                pipe.hset(meta_key, "last_used_at", repr(when))
            pipe.execute()
        except BaseException:
            self._put_back(deltas, costs, last_used)
            raise

    def _put_back(self, deltas: dict, costs: dict, last_used: dict) -> None:
        with self._lock:
            for meta_key, counts in deltas.items():
                self._deltas.setdefault(meta_key, collections.Counter()).update(counts)
            for meta_key, cost in costs.items():
                self._saved_cost[meta_key] = self._saved_cost.get(meta_key, 0.0) + cost
            for meta_key, when in last_used.items():
                self._last_used[meta_key] = max(when, self._last_used.get(meta_key, 0.0))


def record_from_hash(fields: dict[bytes, bytes]) -> PartitionRecord:
    """A partition's counters as the PartitionRecord that Stats reports."""
    record = PartitionRecord()
    for name in COUNTERS:
        raw = fields.get(name.encode())
        if raw is not None:
            value = float(raw)
            setattr(record, name, value if name == "saved_cost" else int(value))
    for name in ("created_at", "last_used_at"):
        raw = fields.get(name.encode())
        if raw is not None:
            setattr(record, name, float(raw))
    return record
