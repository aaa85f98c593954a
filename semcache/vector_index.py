"""A partition's FAISS index of L2-normalized vectors, keyed by entry id."""

from __future__ import annotations

import threading

import faiss
import numpy as np

# One OpenMP thread per search: faster than two for single queries, and the
# gRPC workers already run searches in parallel.
faiss.omp_set_num_threads(1)


class VectorIndex:
    """Exact inner-product search (cosine, since vectors are unit length).

    FAISS indexes are not safe for a search concurrent with an add or remove,
    so each call holds the index's lock; FAISS releases the GIL inside.
    """

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, entry_ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(entry_ids, dtype=np.int64)
        data = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dimension)
        with self._lock:
            self._index.add_with_ids(data, ids)

    def remove(self, entry_ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(entry_ids, dtype=np.int64)
        if len(ids) == 0:
            return 0
        with self._lock:
            return int(self._index.remove_ids(ids))

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Up to k (entry_id, similarity) pairs, best first."""
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.dimension)
        with self._lock:
            k = min(k, int(self._index.ntotal))
            if k == 0:
                return []
            similarities, ids = self._index.search(query, k)
        return [(int(i), float(s)) for i, s in zip(ids[0], similarities[0]) if i >= 0]
