"""The ONNX backend gives the torch vectors; the batcher gives the same vectors, batched."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from semcache_server.batcher import BatchingEmbedder
from semcache_server.embedder import TorchEmbedder, available_cores, check_deadline

SAMPLE = [
    "How do I return an item?",
    "What is your return policy?",
    "is port 22 open",
    "is port 22 closed",
    "Ｗｈａｔ ｉｓ the weather in Zürich, São Paulo and 東京?",
    "a",
    "",
    " ".join(["a very long question about refunds and shipping"] * 80),  # past the 256-token limit
]


def test_onnx_backend_matches_torch(embedder):
    torch_vectors = TorchEmbedder().embed(SAMPLE)
    onnx_batched = embedder.embed(SAMPLE)  # padded together
    onnx_single = np.vstack([embedder.embed([text]) for text in SAMPLE])
    for vectors in (onnx_batched, onnx_single):
        assert vectors.shape == (len(SAMPLE), 384) and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        cosines = (vectors * torch_vectors).sum(axis=1)
        assert cosines.min() >= 0.999, cosines


class CountingEmbedder:
    """Records every model call: (which path, how many texts)."""

    def __init__(self, inner, parallel_calls=2):
        self.inner, self.name, self.dimension, self.backend = inner, inner.name, inner.dimension, "test"
        self.parallel_calls = parallel_calls
        self.calls: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self.running = 0
        self.most_running = 0

    def _call(self, path, texts):
        with self._lock:
            self.calls.append((path, len(texts)))
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            if "boom" in texts:
                raise RuntimeError("model failure")
            return self.inner.embed(texts)
        finally:
            with self._lock:
                self.running -= 1

    def embed(self, texts, deadline=None):
        check_deadline(deadline)
        return self._call("all_cores", texts)

    def embed_on_one_core(self, texts):
        return self._call("one_core", texts)


def _hammer(batcher, texts, threads):
    got: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(threads)

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(n, len(texts), threads):
            got[i] = batcher.embed([texts[i]])[0]

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return got


@pytest.mark.parametrize("parallel_calls", [1, 2])
def test_batcher_batches_concurrent_requests_and_keeps_each_vector(embedder, parallel_calls):
    counting = CountingEmbedder(embedder, parallel_calls)
    batcher = BatchingEmbedder(counting, max_batch=16, max_wait_seconds=0.002)
    texts = [f"question number {i} about my order" for i in range(96)]
    expected = embedder.embed(texts)
    got = _hammer(batcher, texts, 24)
    for i in range(96):  # each caller gets its own text's vector back
        assert float(got[i] @ expected[i]) >= 0.9999
    sizes = [n for _, n in counting.calls]
    assert sum(sizes) == 96
    assert max(sizes) > 1 and len(sizes) < 96 and max(sizes) <= 16
    assert counting.most_running <= parallel_calls
    if parallel_calls == 2:  # concurrent runs go one core each
        assert "one_core" in {path for path, _ in counting.calls}
    # every run slot was given back: a lone caller now runs at once, on every core
    assert batcher._runs == 0 and not batcher._pending
    counting.calls.clear()
    assert batcher.embed(["alone"]).shape == (1, 384)
    assert counting.calls == [("all_cores", 1)]


def test_batcher_model_failure_reaches_the_caller_and_frees_the_run_slot(embedder):
    counting = CountingEmbedder(embedder)
    batcher = BatchingEmbedder(counting, max_batch=8, max_wait_seconds=0.002)
    with pytest.raises(RuntimeError, match="model failure"):
        batcher.embed(["boom"])
    assert batcher.embed(["still works"]).shape == (1, 384)
    assert batcher._runs == 0
    batcher.close()


def test_onnx_one_core_path_and_parallel_bulk_path_give_the_same_vectors(embedder):
    texts = [f"how do I change setting {i} of my account" for i in range(150)]  # 3 chunks of 64
    bulk = embedder.embed(texts)
    one_core = embedder.embed_on_one_core(texts)
    singles = np.vstack([embedder.embed([t]) for t in texts[:5]])
    np.testing.assert_allclose(bulk, one_core, atol=1e-5)
    np.testing.assert_allclose(bulk[:5], singles, atol=1e-5)


@pytest.mark.parametrize("cpu_max,limit", [
    (None, None),  # no cgroup v2 file: the affinity
    ("max 100000\n", None),  # no quota
    ("150000 100000\n", 1),  # 1.5 CPUs: one model call at a time
    ("50000 100000\n", 1),  # under one CPU: still one
    ("6400000 100000\n", None),  # 64 CPUs: the affinity is lower
    ("garbage\n", None),
])
def test_available_cores_follows_affinity_and_the_container_cpu_limit(tmp_path, cpu_max, limit):
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    assert available_cores(path) == (min(limit, affinity) if limit else affinity)


def test_batcher_under_concurrent_failures_answers_everyone_and_frees_every_slot(embedder):
    counting = CountingEmbedder(embedder, parallel_calls=2)
    batcher = BatchingEmbedder(counting, max_batch=4, max_wait_seconds=0.001)
    outcomes: dict[int, str] = {}
    barrier = threading.Barrier(12)

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(6):
            text = "boom" if (n + i) % 5 == 0 else f"question {n} {i}"
            try:
                vector = batcher.embed([text])[0]
                outcomes[n * 6 + i] = "ok" if vector.shape == (384,) else "bad shape"
            except RuntimeError:
                outcomes[n * 6 + i] = "boom" if text == "boom" else "failed with a boom in its batch"

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in workers), "a caller never got an answer"
    assert len(outcomes) == 72
    assert set(outcomes.values()) <= {"ok", "boom", "failed with a boom in its batch"}
    assert "ok" in outcomes.values()
    assert sum(v == "boom" for v in outcomes.values()) == sum((n + i) % 5 == 0 for n in range(12) for i in range(6))
    assert batcher._runs == 0 and not batcher._pending
