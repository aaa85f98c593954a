"""The ONNX backend gives the torch vectors; the batcher gives the same vectors, batched."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from semcache.embedder import BatchingEmbedder, TorchEmbedder

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
    def __init__(self, inner):
        self.inner, self.name, self.dimension, self.backend = inner, inner.name, inner.dimension, "test"
        self.batch_sizes: list[int] = []

    def embed(self, texts):
        self.batch_sizes.append(len(texts))
        if "boom" in texts:
            raise RuntimeError("model failure")
        return self.inner.embed(texts)


def test_batcher_batches_concurrent_requests_and_keeps_each_vector(embedder):
    counting = CountingEmbedder(embedder)
    batcher = BatchingEmbedder(counting, max_batch=16, max_wait_seconds=0.002)
    texts = [f"question number {i} about my order" for i in range(64)]
    expected = embedder.embed(texts)
    got: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(16)

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(n, 64, 16):
            got[i] = batcher.embed([texts[i]])[0]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(64):
        assert float(got[i] @ expected[i]) >= 0.9999
    assert sum(counting.batch_sizes) == 64
    assert max(counting.batch_sizes) > 1 and len(counting.batch_sizes) < 64
    with pytest.raises(RuntimeError, match="model failure"):
        batcher.embed(["boom"])
    assert batcher.embed(["still works"]).shape == (1, 384)
    batcher.close()
