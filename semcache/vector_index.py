"""A partition's vector index: L2-normalized vectors keyed by entry id, searched by
inner product (cosine, since every vector has unit length) with FAISS.

The vectors live in one growable float32 matrix with a slot per entry. Removing an
entry moves the last row into its slot, so evictions, expirations and replacements
cost O(1) instead of the O(n) compaction of `IndexIDMap.remove_ids` on a flat index.
FAISS's exact inner-product kernel (`faiss.knn`, the one `IndexFlatIP` runs) scans
the live rows without copying them.
"""

from __future__ import annotations

import threading

import faiss
import numpy as np

# One OpenMP thread per search: faster than two for single queries, and the
# gRPC workers already run searches in parallel.
faiss.omp_set_num_threads(1)

_INITIAL_CAPACITY = 64


class VectorIndex:
    """Exact search. Every call holds the index's lock; FAISS releases the GIL inside,
    so searches of different partitions run in parallel."""

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        self._vectors = np.empty((_INITIAL_CAPACITY, dimension), dtype=np.float32)
        self._ids = np.empty(_INITIAL_CAPACITY, dtype=np.int64)
        self._slot_of: dict[int, int] = {}
        self._count = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._count

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self._slot_of

    def _reserve(self, count: int) -> None:
        capacity = len(self._ids)
        if count <= capacity:
            return
        while capacity < count:
            capacity *= 2
        vectors = np.empty((capacity, self.dimension), dtype=np.float32)
        vectors[: self._count] = self._vectors[: self._count]
        ids = np.empty(capacity, dtype=np.int64)
        ids[: self._count] = self._ids[: self._count]
        self._vectors, self._ids = vectors, ids

    def add(self, entry_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under new ids (an id already present is overwritten in place)."""
        ids = np.ascontiguousarray(entry_ids, dtype=np.int64).reshape(-1)
        data = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dimension)
        with self._lock:
            fresh = []
            for row, entry_id in enumerate(ids.tolist()):
                slot = self._slot_of.get(entry_id)
                if slot is None:
                    fresh.append(row)
                else:
                    self._vectors[slot] = data[row]
            if not fresh:
                return
            start = self._count
            self._reserve(start + len(fresh))
            end = start + len(fresh)
            self._vectors[start:end] = data[fresh]
            self._ids[start:end] = ids[fresh]
            self._slot_of.update(zip(ids[fresh].tolist(), range(start, end)))
            self._count = end

    def remove(self, entry_ids: np.ndarray) -> int:
        """Remove these ids (unknown ones are ignored); returns how many were removed."""
        removed = 0
        with self._lock:
            for entry_id in np.asarray(entry_ids, dtype=np.int64).reshape(-1).tolist():
                slot = self._slot_of.pop(entry_id, None)
                if slot is None:
                    continue
                last = self._count - 1
                if slot != last:
                    moved = int(self._ids[last])
                    self._vectors[slot] = self._vectors[last]
                    self._ids[slot] = moved
                    self._slot_of[moved] = slot
                self._count = last
                removed += 1
        return removed

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Up to k (entry_id, similarity) pairs, best first."""
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.dimension)
        with self._lock:
            k = min(k, self._count)
            if k == 0:
                return []
            similarities, slots = faiss.knn(query, self._vectors[: self._count], k, metric=faiss.METRIC_INNER_PRODUCT)
            ids = self._ids[slots[0]]
        return [(int(i), float(s)) for i, s in zip(ids, similarities[0])]

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """A copy of (ids, vectors) of every live entry."""
        with self._lock:
            return self._ids[: self._count].copy(), self._vectors[: self._count].copy()
