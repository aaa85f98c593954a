"""tune's margin: a setting chosen by the upper bound of its false-hit rate keeps to the
target on unseen data; one chosen by the point estimate often does not. Synthetic data
whose true rates are known, so "unseen data" is the truth itself."""

from __future__ import annotations

import numpy as np
import pytest

from semcache_server.bench.accuracy import Point, false_hit_upper_bound, recommend, recommend_with_margin

THRESHOLDS = [round(0.80 + 0.01 * i, 2) for i in range(20)]


def true_false_hit_rate(t: float) -> float:
    return max(0.0, 0.95 - t) * 0.2  # 3% at 0.80, 1% at 0.90, 0 from 0.95


def true_hit_rate(t: float) -> float:
    return 1.2 - t


def sample_sweep(rng: np.random.Generator, negatives: int) -> list[Point]:
    sweep = []
    for t in THRESHOLDS:
        false_hits = int(rng.binomial(negatives, true_false_hit_rate(t)))
        sweep.append(Point(t, true_hit_rate(t), false_hits / negatives, 1.0, 0, negatives, false_hits, negatives))
    return sweep


def test_the_wilson_bound():
    assert false_hit_upper_bound(Point(0.9, 0, 0.0, 1, 0, 100, 0, 100)) == pytest.approx(0.02635, abs=1e-4)
    assert false_hit_upper_bound(Point(0.9, 0, 0.1, 1, 0, 1000, 100, 1000)) == pytest.approx(0.1167, abs=1e-3)
    assert false_hit_upper_bound(Point(0.9, 0, 0.0, 1, 0, 0, 0, 0)) == 1.0  # no evidence: no claim


def test_a_margin_keeps_the_target_on_unseen_data_and_the_point_estimate_does_not():
    rng = np.random.default_rng(0)
    target = 0.01
    over = {"point": 0, "margin": 0}
    trials = 300
    for _ in range(trials):
        sweep = sample_sweep(rng, negatives=500)
        chosen = {"point": recommend(sweep, target), "margin": recommend_with_margin(sweep, target)}
        for rule, point in chosen.items():
            if point is not None and true_false_hit_rate(point.threshold) > target + 1e-12:
                over[rule] += 1
    assert over["margin"] / trials <= 0.05  # the bound is one-sided 95%
    assert over["point"] / trials >= 0.3  # tuning to the sample overshoots often


def test_more_data_lets_the_margin_tune_looser():
    rng = np.random.default_rng(1)
    small = recommend_with_margin(sample_sweep(rng, 300), 0.01)
    large = recommend_with_margin(sample_sweep(rng, 30_000), 0.01)
    assert small is not None and large is not None and large.threshold < small.threshold
