"""The verifier at serving time: the exported pair model on onnxruntime.

`score(query, candidates)` gives, for each stored query, the probability that it asks
the same thing as `query`. Loaded from a directory written by `semcache train verifier`
(verifier.onnx, tokenizer.json, verifier.json).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from semcache_server.errors import ConfigError
from semcache_server.verifier.combine import Combination
from semcache_server.verifier.training import CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE

# The verifier shipped in the package (trained by the command in bench/README.md, "Verifier").
DEFAULT_VERIFIER_DIR = Path(__file__).resolve().parent / "default"
NO_VERIFIER = "none"


class Verifier(Protocol):
    name: str

    def score(self, query: str, candidates: Sequence[str]) -> np.ndarray:
        """The pair model's P(same question) for each candidate, in order."""
        ...

    def judge(self, query: str, candidates: Sequence[str], similarities: Sequence[float]) -> np.ndarray:
        """What the decision compares with min_verifier_score: the score combined with
        each candidate's cosine where the verifier is calibrated (verifier/combine.py)."""
        ...


class OnnxVerifier:
    def __init__(self, directory: str | Path, threads: int = 0) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        path = Path(directory)
        missing = [f for f in (MODEL_FILE, TOKENIZER_FILE, CONFIG_FILE) if not (path / f).is_file()]
        if missing:
            raise ConfigError(
                f"verifier {str(path)!r} is not a verifier directory (missing {', '.join(missing)}); "
                "make one with `semcache train verifier`, or set verifier = \"none\""
            )
        try:
            config = json.loads((path / CONFIG_FILE).read_text())
            self.max_length = int(config["max_length"])
            combination = config.get("combination")
            self.combination = Combination.from_json(combination["weights"]) if combination else None
            self._tokenizer = Tokenizer.from_file(str(path / TOKENIZER_FILE))
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.force_spinning_stop", "1")
            self._session = onnxruntime.InferenceSession(
                str(path / MODEL_FILE), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime's load errors (InvalidProtobuf, ...) share no base class but Exception
            raise ConfigError(f"cannot load the verifier in {str(path)!r}: {type(e).__name__}: {e}") from None
        self._tokenizer.enable_truncation(self.max_length)
        self._tokenizer.no_padding()  # tokenizer.json may pad to a fixed length; a pair runs alone, unpadded
        self.name = str(config.get("name", path.name))
        self.config = config

    def score(self, query: str, candidates: Sequence[str]) -> np.ndarray:
        return self.score_pairs([(query, c) for c in candidates])

    def judge(self, query: str, candidates: Sequence[str], similarities: Sequence[float]) -> np.ndarray:
        scores = self.score(query, candidates)
        return scores if self.combination is None else self.combination.probability(similarities, scores)

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """P(same question) for each (query, stored query) pair, in order.

        Each pair runs alone. The int8 model quantizes its activations with one scale per
        run, so in a batch a pair's score moved with its batch-mates and their padding (up
        to 0.23, 15% of a banking77 stream's candidates by more than 0.05): a Lookup's
        verdict depended on which other candidates it had. Alone, a pair scores the same
        in every call, and no slower here (bench/README.md, "One pair per run")."""
        if not pairs:
            return np.empty(0, dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(pairs))  # truncated, not padded: one run each
        logits = np.empty(len(encodings), dtype=np.float64)
        for i, e in enumerate(encodings):
            feeds = {
                "input_ids": np.array([e.ids], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids], dtype=np.int64),
            }
            logits[i] = float(self._session.run(None, feeds)[0].reshape(-1)[0])
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def load_verifier(setting: str, threads: int = 0) -> OnnxVerifier | None:
    """The verifier a `verifier` setting names: "" = the shipped one (None when the package
    ships none), "none" = None, else the directory (ConfigError when it is not one)."""
    if setting == NO_VERIFIER:
        return None
    if setting == "":
        if not (DEFAULT_VERIFIER_DIR / MODEL_FILE).is_file():
            return None
        return OnnxVerifier(DEFAULT_VERIFIER_DIR, threads)
    return OnnxVerifier(setting, threads)
