"""A partition's vector index: L2-normalized vectors keyed by entry id, searched by
inner product (cosine, since every vector has unit length) with FAISS.

Small partitions are exact (flat): the vectors live in one growable float32 matrix
with a slot per entry. Removing an entry moves the last row into its slot, so
evictions, expirations and replacements cost O(1) instead of the O(n) compaction of
`IndexIDMap.remove_ids` on a flat index. FAISS's exact inner-product kernel
(`faiss.knn`, the one `IndexFlatIP` runs) scans the live rows without copying them.

Past `ivf_min_entries` a background thread trains an IVF-Flat index (it supports
removal by id; HNSW does not) on a snapshot, replays what changed meanwhile, and
swaps it in; the flat matrix serves until then and is freed after. It is retrained
the same way each time the partition doubles.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import faiss
import numpy as np

_INITIAL_CAPACITY = 64
# Candidates fetched by a Lookup's first search; more are fetched only when the best ones
# are refused (expired, deleted, another request key).
FIRST_SEARCH_K = 8
# Candidates a Lookup reads at most, so that many near neighbours of another request key
# (or expired ones) cannot make one Lookup read them all.
MAX_CANDIDATES_READ = 1024
log = logging.getLogger("semcache")
_thread_state = threading.local()


def _one_omp_thread() -> None:
    """One OpenMP thread per search: faster than two for single queries, the gRPC
    workers already search in parallel, and idle OpenMP workers spin on the core the
    embedding model needs. OpenMP keeps this setting per calling thread (a thread
    starts from OMP_NUM_THREADS), so each thread that calls FAISS sets it once."""
    if not getattr(_thread_state, "omp_single", False):
        faiss.omp_set_num_threads(1)
        _thread_state.omp_single = True


class VectorIndex:
    """Every call holds the index's lock; FAISS releases the GIL inside, so searches of
    different partitions run in parallel."""

    def __init__(self, dimension: int, *, ivf_min_entries: int = 0, ivf_nprobe: int = 8) -> None:
        self.dimension = dimension
        self.ivf_min_entries = ivf_min_entries  # 0 = always exact
        self.ivf_nprobe = ivf_nprobe
        self._vectors = np.empty((_INITIAL_CAPACITY, dimension), dtype=np.float32)
        self._ids = np.empty(_INITIAL_CAPACITY, dtype=np.int64)
        self._slot_of: dict[int, int] = {}
        self._count = 0
        self._lock = threading.Lock()
        self._ivf: faiss.IndexIVFFlat | None = None
        self._ivf_trained_on = 0
        # While an IVF index is built: the changes to replay into it before the swap.
        self._changes: list[tuple[str, np.ndarray, np.ndarray | None]] | None = None
        self._builder: threading.Thread | None = None
        self.builds = 0

    @property
    def kind(self) -> str:
        return "ivf" if self._ivf is not None else "flat"

    def __len__(self) -> int:
        return int(self._ivf.ntotal) if self._ivf is not None else self._count

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
        _one_omp_thread()
        # The costly part of an IVF add, finding each vector's list, runs before taking
        # the lock, so searches are not kept waiting for it (~40 ms for 500 vectors).
        ivf = self._ivf
        lists = _nearest_lists(ivf, data) if ivf is not None else None
        with self._lock:
            if self._changes is not None:
                self._changes.append(("add", ids.copy(), data.copy()))
            if self._ivf is not None:
                if self._ivf is not ivf:  # built or retrained and swapped in meanwhile
                    lists = _nearest_lists(self._ivf, data)
                self._ivf.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)))
                assert lists is not None
                self._ivf.add_core(len(ids), faiss.swig_ptr(data), faiss.swig_ptr(ids), faiss.swig_ptr(lists))
                self._maybe_build()
                return
            self._add_flat(ids, data)
            self._maybe_build()

    def _add_flat(self, ids: np.ndarray, data: np.ndarray) -> None:
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
        self._slot_of.update(zip(ids[fresh].tolist(), range(start, end), strict=True))
        self._count = end

    def remove(self, entry_ids: np.ndarray) -> int:
        """Remove these ids (unknown ones are ignored); returns how many were removed."""
        ids = np.ascontiguousarray(entry_ids, dtype=np.int64).reshape(-1)
        _one_omp_thread()
        with self._lock:
            if self._changes is not None:
                self._changes.append(("remove", ids.copy(), None))
            if self._ivf is not None:
                return int(self._ivf.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids))))
            return self._remove_flat(ids)

    def _remove_flat(self, ids: np.ndarray) -> int:
        removed = 0
        for entry_id in ids.tolist():
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
        _one_omp_thread()
        with self._lock:
            if self._ivf is not None:
                similarities, found = self._ivf.search(query, k)
                return [(int(i), float(s)) for i, s in zip(found[0], similarities[0], strict=True) if i >= 0]
            k = min(k, self._count)
            if k == 0:
                return []
            similarities, slots = faiss.knn(query, self._vectors[: self._count], k, metric=faiss.METRIC_INNER_PRODUCT)
            ids = self._ids[slots[0]]
        return [(int(i), float(s)) for i, s in zip(ids, similarities[0], strict=True)]

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """A copy of (ids, vectors) of every live entry."""
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        if self._ivf is None:
            return self._ids[: self._count].copy(), self._vectors[: self._count].copy()
        invlists = self._ivf.invlists
        assert invlists is not None  # an IVF index always has its lists
        ids, vectors = [], []
        for list_no in range(self._ivf.nlist):
            size = invlists.list_size(list_no)
            if size:
                ids.append(faiss.rev_swig_ptr(invlists.get_ids(list_no), size).copy())
                codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * self.dimension * 4)
                vectors.append(np.frombuffer(codes.tobytes(), dtype=np.float32).reshape(size, self.dimension))
        if not ids:
            return np.empty(0, dtype=np.int64), np.empty((0, self.dimension), dtype=np.float32)
        return np.concatenate(ids), np.vstack(vectors)

    # -- IVF ----------------------------------------------------------------------

    def _maybe_build(self) -> None:
        """Start a background (re)build when the partition is past the size, or has doubled."""
        if not self.ivf_min_entries or self._builder is not None:
            return
        size = len(self)
        if size >= self.ivf_min_entries and size >= 2 * self._ivf_trained_on:
            self._changes = []
            ids, vectors = self._snapshot()
            self._builder = threading.Thread(
                target=self._build, args=(ids, vectors), name="semcache-ivf-build", daemon=True
            )
            self._builder.start()

    def _build(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        try:
            index = train_ivf(vectors, self.dimension)
            index.nprobe = self.ivf_nprobe
            for start in range(0, len(ids), 65536):
                index.add_with_ids(vectors[start:start + 65536], ids[start:start + 65536])
            with self._lock:
                for action, change_ids, data in self._changes or []:
                    selector = faiss.IDSelectorArray(len(change_ids), faiss.swig_ptr(change_ids))
                    index.remove_ids(selector)
                    if action == "add":
                        assert data is not None  # an add carries its vectors
                        index.add_with_ids(data, change_ids)
                self._ivf = index
                self._ivf_trained_on = int(index.ntotal)
                self._changes = None
                # The flat matrix is no longer read: give its memory back.
                self._vectors = np.empty((0, self.dimension), dtype=np.float32)
                self._ids = np.empty(0, dtype=np.int64)
                self._slot_of = {}
                self._count = 0
                self.builds += 1
        except Exception:  # keep serving from what there is; a later add retries
            log.exception("IVF build failed")
            with self._lock:
                self._changes = None
        finally:
            self._builder = None

    def wait_for_build(self, timeout_seconds: float | None = None) -> None:
        builder = self._builder
        if builder is not None:
            builder.join(timeout_seconds)


def _nearest_lists(index: faiss.IndexIVFFlat, data: np.ndarray) -> np.ndarray:
    """The inverted list each vector belongs to (what add_with_ids computes first)."""
    _, lists = index.quantizer.search(data, 1)
    return np.ascontiguousarray(lists.reshape(-1), dtype=np.int64)


def train_ivf(vectors: np.ndarray, dimension: int) -> faiss.IndexIVFFlat:
    """An IVF-Flat (inner product) fitted to these vectors, empty of entries.

    nlist ~ 2 sqrt(n) lists (2,000 at a million: with nprobe 8 a query scans ~0.4% of
    the vectors; bench/ivf_params.py measured 1.0 ms p99 and the exact best match for
    every probe), trained on at most 32 vectors per list.
    """
    count = len(vectors)
    nlist = int(min(8192, max(16, 2 * np.sqrt(count))))
    quantizer = faiss.IndexFlatIP(dimension)
    index = faiss.IndexIVFFlat(quantizer, dimension, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = vectors
    if count > 32 * nlist:
        sample = vectors[np.random.default_rng(0).choice(count, 32 * nlist, replace=False)]
    index.cp.niter = 10
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]  # missing from faiss's stubs
    return index


def widening_search(index: VectorIndex, vector: np.ndarray, search_seconds: list[float]) -> Iterator[list[tuple[int, float]]]:
    """The nearest (entry_id, similarity) pairs in rounds, best first, each round only the
    ones not yielded before: FIRST_SEARCH_K, then 4x as many while the caller asks for more,
    up to MAX_CANDIDATES_READ. Each search's seconds are appended to search_seconds."""
    k, seen = FIRST_SEARCH_K, 0
    while seen < MAX_CANDIDATES_READ:
        started = time.perf_counter()
        found = index.search(vector, k)
        search_seconds.append(time.perf_counter() - started)
        yield found[seen:]
        if len(found) < k:  # every vector in the index was seen
            return
        seen = len(found)
        k = min(k * 4, MAX_CANDIDATES_READ)
