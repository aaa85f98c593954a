"""`semcache train embedder`: a contrastive fine-tune of the embedded MiniLM on a tiny
labeled stream, in seconds; the saved model is served by the server's own embedder
(exported to ONNX), and it has learned: questions with the same answer sit closer than
their hard negatives than they did before."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semcache_server.embedder import load_embedder
from semcache_server.embedder_training import (
    RECORD_FILE,
    EmbedderTrainingSettings,
    pair_examples,
    replay_examples,
    train_embedder,
)
from semcache_server.verifier.data import TrainingPair
from tests.helpers import REPO

DATA = REPO.parent / "shared" / "datasets"
FAST = EmbedderTrainingSettings(epochs=4, batch_size=16, learning_rate=1e-4, max_length=32, seed=5, threads=2)


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    """48 banking77 replay queries: 8 of each of 6 intents."""
    groups: dict[str, list[str]] = {}
    for line in (DATA / "banking77" / "dev.replay.jsonl").read_text().splitlines():
        record = json.loads(line)
        texts = groups.setdefault(record["answer_key"], [])
        if len(texts) < 8 and record["text"] not in texts:
            texts.append(record["text"])
    chosen = [key for key, texts in groups.items() if len(texts) == 8][:6]
    path = tmp_path_factory.mktemp("stream") / "tiny.replay.jsonl"
    path.write_text("".join(json.dumps({"text": t, "answer_key": k}) + "\n" for k in chosen for t in groups[k]))
    return path


def _margin(embed, examples) -> float:  # type: ignore[no-untyped-def]
    """Mean cosine to the positive less mean cosine to the hard negative."""
    anchors = embed([e.anchor for e in examples])
    positives = embed([e.positive for e in examples])
    negatives = embed([e.negative for e in examples])
    return float(np.mean(np.sum(anchors * positives, 1)) - np.mean(np.sum(anchors * negatives, 1)))


def test_a_tiny_fine_tune_is_served_by_the_embedder_and_has_learned(stream, tmp_path, embedder):
    examples = replay_examples([stream], embedder.embed, seed=5)
    assert len(examples) == 48 and all(e.negative is not None for e in examples)
    assert all(e.answer != e.negative_answer for e in examples)  # a hard negative answers something else
    record = train_embedder(examples, tmp_path / "tuned", FAST, progress=False)
    assert record["training"]["steps"] == 12 and record["training"]["final_loss"] is not None
    assert json.loads((tmp_path / "tuned" / RECORD_FILE).read_text()) == record

    tuned = load_embedder(str(tmp_path / "tuned"), cache_dir=tmp_path / "onnx")
    assert tuned.backend == "onnx" and tuned.dimension == 384
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(tmp_path / "tuned"), device="cpu")
    texts = ["how do I get a new card", "my card has not arrived"]
    assert np.allclose(tuned.embed(texts), reference.encode(texts, normalize_embeddings=True), atol=1e-4)
    before, after = _margin(embedder.embed, examples), _margin(tuned.embed, examples)
    assert after > before + 0.05, (before, after)


def test_training_is_reproducible(stream, tmp_path, embedder):
    examples = replay_examples([stream], embedder.embed, seed=5)[:32]
    settings = EmbedderTrainingSettings(epochs=1, batch_size=16, max_length=32, seed=5, threads=2)
    first = train_embedder(examples, tmp_path / "a", settings, progress=False)
    second = train_embedder(examples, tmp_path / "b", settings, progress=False)
    assert first["training"]["final_loss"] == second["training"]["final_loss"]


def test_pair_examples_take_positives_and_the_anchor_s_hard_negatives():
    pairs = [
        TrainingPair("how do I reset my password", "I forgot my password", 1, "paraphrase"),
        TrainingPair("how do I reset my password", "how do I reset my router", 0, "negative"),
        TrainingPair("what time do you open", "when do you open", 1, "paraphrase"),
    ]
    examples = pair_examples(pairs, seed=0)
    assert len(examples) == 2  # label-0 pairs give negatives, not examples
    by_anchor = {e.anchor: e for e in examples}
    reset = by_anchor.get("how do I reset my password") or by_anchor["I forgot my password"]
    if reset.anchor == "how do I reset my password":
        assert reset.negative == "how do I reset my router"
    assert all(e.answer != e.negative_answer for e in examples)


def test_bad_inputs_are_a_clear_message(tmp_path):
    import subprocess
    import sys

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "semcache_server", "train", "embedder", *argv],
                              capture_output=True, text=True, timeout=120)

    missing = run(str(tmp_path / "missing.pairs.jsonl"), "--out", str(tmp_path / "out"))
    assert missing.returncode != 0 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    nothing = run("--out", str(tmp_path / "out"))
    assert nothing.returncode != 0 and "give pair files" in nothing.stderr and "Traceback" not in nothing.stderr
    pairs = tmp_path / "p.pairs.jsonl"
    pairs.write_text(json.dumps({"a": "x", "b": "y", "label": 0}) + "\n")
    no_positive = run(str(pairs), "--out", str(tmp_path / "out"))
    assert no_positive.returncode != 0 and "no training examples" in no_positive.stderr
    assert "Traceback" not in no_positive.stderr
