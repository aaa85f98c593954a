"""`semcache train calibrate --verifier DIR PAIRS.jsonl...`: fit the combination of cosine
and verifier score (verifier/combine.py) on labeled pairs, and record it in the
verifier's verifier.json, where the server reads it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from semcache_server.verifier import combine
from semcache_server.verifier.data import TrainingPair
from semcache_server.verifier.training import CONFIG_FILE


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The probability that a random label-1 pair outscores a random label-0 one."""
    positives, negatives = scores[labels == 1], scores[labels == 0]
    if not len(positives) or not len(negatives):
        return float("nan")
    ranks = np.argsort(np.argsort(np.concatenate([positives, negatives]), kind="stable")) + 1
    p, n = len(positives), len(negatives)
    return round(float((ranks[:p].sum() - p * (p + 1) / 2) / (p * n)), 4)


def calibrate(
    verifier_dir: Path, pairs: Sequence[TrainingPair], embed: Callable[[list[str]], np.ndarray],
    min_similarity: float = 0.6,
) -> dict:
    """Fit on the pairs whose cosine is at least min_similarity (those are the ones the
    decision ever asks about), write the result into verifier.json, and return it."""
    from semcache_server.verifier.model import OnnxVerifier

    texts = list(dict.fromkeys(t for p in pairs for t in (p.a, p.b)))
    vectors = dict(zip(texts, np.asarray(embed(texts), dtype=np.float32), strict=True))
    similarities = np.array([float(vectors[p.a] @ vectors[p.b]) for p in pairs])
    kept = [i for i, s in enumerate(similarities) if s >= min_similarity]
    if not kept:
        raise ValueError(f"no pair has a cosine of {min_similarity} or more")
    band = [pairs[i] for i in kept]
    sims = similarities[kept]
    labels = np.array([p.label for p in band])
    verifier = OnnxVerifier(verifier_dir)
    scores = verifier.score_pairs([(p.b, p.a) for p in band])  # (query, stored), as the decision asks
    combination = combine.fit(sims, scores, labels)
    digest = hashlib.sha256()
    for p in band:
        digest.update(f"{p.a}\t{p.b}\t{p.label}\n".encode())
    record = {
        "weights": combination.to_json(),
        "min_similarity": min_similarity,
        "pairs": len(band),
        "positives": int(labels.sum()),
        "pairs_sha256": digest.hexdigest(),
        "auc": {
            "cosine": auc(sims, labels), "verifier": auc(scores, labels),
            "combined": auc(combination.probability(sims, scores), labels),
        },
    }
    path = Path(verifier_dir) / CONFIG_FILE
    config = json.loads(path.read_text())
    config["combination"] = record
    path.write_text(json.dumps(config, indent=2) + "\n")
    return record
