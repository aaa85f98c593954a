"""The FAISS partition index returns what a NumPy brute-force search returns."""

from __future__ import annotations

import numpy as np
import pytest

from semcache.vector_index import VectorIndex


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
