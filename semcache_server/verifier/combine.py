"""One calibrated decision from two signals.

The pair model's score and the embedding's cosine each see something the other misses:
the verifier reads both texts together (word order, negation, the one word that
differs), the cosine has seen far more paraphrases than our training pairs hold (on
general paraphrase sets it ranks better than the verifier). Rather than stacking a cut
on each, the decision uses

    P(same question) = sigmoid(w0 + w1 * cosine + w2 * logit(verifier score))

fitted by logistic regression on labeled pairs in the band the verifier is asked about
(`semcache train calibrate`), and recorded in the verifier's verifier.json under
"combination". A verifier without one is judged by its score alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

_EPSILON = 1e-6  # keeps logit() finite at scores of 0 and 1


def _design(similarities: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray) -> np.ndarray:
    cosine = np.asarray(similarities, dtype=np.float64)
    p = np.clip(np.asarray(scores, dtype=np.float64), _EPSILON, 1 - _EPSILON)
    return np.column_stack([np.ones_like(cosine), cosine, np.log(p / (1 - p))])


@dataclasses.dataclass(frozen=True)
class Combination:
    bias: float
    cosine_weight: float
    verifier_weight: float

    def probability(self, similarities: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """P(same question) for each (cosine, verifier score)."""
        logits = _design(similarities, scores) @ np.array([self.bias, self.cosine_weight, self.verifier_weight])
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def to_json(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, record: dict) -> Combination:
        return cls(float(record["bias"]), float(record["cosine_weight"]), float(record["verifier_weight"]))


def fit(
    similarities: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
    l2: float = 1e-3,
    iterations: int = 50,
) -> Combination:
    """Logistic regression (Newton's method, a little L2 on the two weights), balanced so
    that each label weighs half: the calibrated probability then ranks, and the cut on it
    is chosen for a false-hit target (bench tune), not by the training pairs' label mix."""
    x = _design(similarities, scores)
    y = np.asarray(labels, dtype=np.float64)
    if len(y) < 2 or y.min() == y.max():
        raise ValueError("calibrating needs pairs of both labels")
    sample_weight = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    penalty = np.diag([0.0, l2, l2]) * len(y)
    w = np.zeros(3)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = x.T @ (sample_weight * (p - y)) + penalty @ w
        hessian = (x * (sample_weight * p * (1 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return Combination(float(w[0]), float(w[1]), float(w[2]))
