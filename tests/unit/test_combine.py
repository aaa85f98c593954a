"""The combined decision's fit: logistic regression recovers a known rule, and ranks at
least as well as either signal alone when each carries some of the truth."""

from __future__ import annotations

import numpy as np
import pytest

from semcache_server.verifier import combine
from semcache_server.verifier.calibrate import auc


def test_fit_recovers_known_weights():
    rng = np.random.default_rng(0)
    cosine = rng.uniform(0.6, 1.0, 20_000)
    scores = rng.uniform(0.01, 0.99, 20_000)
    truth = combine.Combination(bias=-20.0, cosine_weight=24.0, verifier_weight=1.5)
    labels = (rng.uniform(size=20_000) < truth.probability(cosine, scores)).astype(int)
    fitted = combine.fit(cosine, scores, labels, l2=0.0)
    # Balanced weighting moves only the bias (by the log of the label odds).
    assert fitted.cosine_weight == pytest.approx(24.0, rel=0.1)
    assert fitted.verifier_weight == pytest.approx(1.5, rel=0.1)
    odds = labels.mean() / (1 - labels.mean())
    assert fitted.bias == pytest.approx(-20.0 - np.log(odds), abs=0.6)


def test_the_combination_ranks_better_than_either_signal():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 4000)
    cosine = 0.8 + 0.05 * labels + rng.normal(0, 0.05, 4000)  # each signal: a noisy view of the label
    scores = 1 / (1 + np.exp(-(2.0 * labels - 1 + rng.normal(0, 1.5, 4000))))
    fitted = combine.fit(cosine, scores, labels)
    combined = fitted.probability(cosine, scores)
    assert auc(combined, labels) > max(auc(cosine, labels), auc(scores, labels)) + 0.02
    assert np.all((combined > 0) & (combined < 1))
    assert combine.Combination.from_json(fitted.to_json()) == combine.Combination(
        *(round(v, 6) for v in (fitted.bias, fitted.cosine_weight, fitted.verifier_weight))
    )


def test_fit_needs_both_labels():
    with pytest.raises(ValueError, match="both labels"):
        combine.fit([0.9, 0.8], [0.5, 0.5], [1, 1])
