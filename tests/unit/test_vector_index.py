"""The FAISS partition index returns what a NumPy brute-force search returns."""

from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from semcache_server.vector_index import VectorIndex


def _unit_rows(rng: np.random.Generator, n: int, dimension: int) -> np.ndarray:
    rows = rng.standard_normal((n, dimension)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("n,dimension", [(1, 8), (50, 16), (3000, 384)])
def test_search_matches_numpy_brute_force_after_adds_and_removes(n, dimension):
    rng = np.random.default_rng(n)
    vectors = _unit_rows(rng, n, dimension)
    ids = rng.choice(10**9, size=n, replace=False).astype(np.int64)
    index = VectorIndex(dimension)
    index.add(ids[: n // 2], vectors[: n // 2])
    index.add(ids[n // 2 :], vectors[n // 2 :])
    removed = ids[::3]
    assert index.remove(removed) == len(removed)
    keep = ~np.isin(ids, removed)
    live_ids, live_vectors = ids[keep], vectors[keep]
    assert len(index) == len(live_ids)
    for query in _unit_rows(rng, 20, dimension):
        k = min(10, len(live_ids))
        expected_similarities = live_vectors @ query
        order = np.argsort(-expected_similarities)[:k]
        got = index.search(query, 10)
        assert [i for i, _ in got] == list(live_ids[order])
        np.testing.assert_allclose([s for _, s in got], expected_similarities[order], rtol=0, atol=1e-5)


def test_empty_index_and_removing_unknown_ids():
    index = VectorIndex(4)
    assert index.search(np.ones(4, dtype=np.float32) / 2, 5) == []
    assert index.remove(np.array([1, 2], dtype=np.int64)) == 0


def test_switches_to_ivf_in_the_background_and_keeps_every_change():
    rng = np.random.default_rng(7)
    dimension = 32
    centers = _unit_rows(rng, 40, dimension)  # clustered, like real embeddings
    vectors = centers[rng.integers(0, 40, 3000)] + 0.15 * rng.standard_normal((3000, dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex(dimension, ivf_min_entries=2000, ivf_nprobe=8)
    index.add(np.arange(3000), vectors)
    # Changes while the IVF index may still be building.
    index.remove(np.arange(100))
    extra = _unit_rows(rng, 100, dimension)
    index.add(np.arange(10_000, 10_100), extra)
    index.wait_for_build()
    assert index.kind == "ivf" and len(index) == 3000
    for i in range(100):
        assert all(entry_id >= 100 for entry_id, _ in index.search(vectors[i], 5))
        assert index.search(extra[i], 1)[0][0] == 10_000 + i
    probes = vectors[100:600] + 0.02 * rng.standard_normal((500, dimension)).astype(np.float32)
    same_best = sum(index.search(p / np.linalg.norm(p), 1)[0][0] == 100 + n for n, p in enumerate(probes))
    assert same_best >= 0.99 * 500
    assert index.remove(np.arange(100, 200)) == 100 and len(index) == 2900
    ids, snapshot = index.vectors()
    assert sorted(ids.tolist()) == list(range(200, 3000)) + list(range(10_000, 10_100))
    np.testing.assert_allclose(snapshot[np.argsort(ids)][:5], vectors[200:205], atol=1e-6)
    # Adds into the IVF index (lists found before the lock is taken); an id added again moves.
    late = _unit_rows(rng, 20, dimension)
    index.add(np.arange(30_000, 30_020), late)
    index.add(np.array([30_000]), late[1:2])
    assert len(index) == 2920
    assert all(index.search(late[i], 1)[0][0] == 30_000 + i for i in range(2, 20))
    assert {entry_id for entry_id, _ in index.search(late[1], 2)} == {30_000, 30_001}
    assert all(entry_id != 30_000 for entry_id, _ in index.search(late[0], 3))
    # Doubling retrains in the background.
    index.add(np.arange(20_000, 23_200), np.vstack([vectors, vectors[:200]]))
    index.wait_for_build()
    assert index.builds == 2 and len(index) == 6120


def test_searches_run_one_openmp_thread_in_every_calling_thread():
    # OpenMP keeps the thread count per thread: a gRPC worker thread starts from the
    # process default (all cores), and idle OpenMP workers would spin on the cores the
    # embedding model needs.
    index = VectorIndex(8)
    rng = np.random.default_rng(1)
    index.add(np.arange(4), _unit_rows(rng, 4, 8))
    seen = []

    def search_in_new_thread():
        index.search(_unit_rows(rng, 1, 8)[0], 2)
        seen.append(faiss.omp_get_max_threads())

    worker = threading.Thread(target=search_in_new_thread)
    worker.start()
    worker.join()
    assert seen == [1]
