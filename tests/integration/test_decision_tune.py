"""bench tune with a verifier: the whole decision (threshold, band, score) fitted to a
false-hit target with a margin, on a synthetic set whose truth is known. Vectors are
made at chosen cosines and the verifier is a fixed table, so which rule is right
depends only on the rules, not on any model; the decision is the server's own, over a
real in-process cache (LMDB, FAISS)."""

from __future__ import annotations

import numpy as np

from semcache_server.bench import decision_tune
from semcache_server.bench.datasets import Pair
from semcache_server.bench.targets import InProcessTarget
from tests.helpers import unit_vector, vector_at_similarity


class TableVerifier:
    """Scores each (query, stored) pair from a table: a known verifier, not a model."""

    name = "table"

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        self.table = table

    def score(self, query, candidates):  # type: ignore[no-untyped-def]
        return np.array([self.table[(query, c)] for c in candidates], dtype=np.float32)

    def judge(self, query, candidates, similarities):  # type: ignore[no-untyped-def]
        return self.score(query, candidates)


def _synthetic(dimension: int):  # type: ignore[no-untyped-def]
    """120 positives at cosine 0.82 the verifier confirms, 120 negatives at 0.84 it
    rejects, and 30 word-order negatives at 0.97 (above any threshold) it rejects."""
    pairs, vectors, table = [], {}, {}

    def add(i: int, a: str, b: str, label: int, cosine: float, score: float) -> None:
        base = unit_vector(i, dimension)
        vectors[a] = np.array(base, dtype=np.float32)
        vectors[b] = np.array(vector_at_similarity(base, cosine, seed=10_000 + i), dtype=np.float32)
        pairs.append(Pair(a, b, label, "paraphrase" if label else "negative"))
        table[(b, a)] = score

    for i in range(120):
        add(i, f"how do I return item {i}", f"what is the return policy for item {i}", 1, 0.82, 0.9)
        add(1000 + i, f"where is parcel {i}", f"can I change the address of parcel {i}", 0, 0.84, 0.1)
    for i in range(30):
        add(2000 + i, f"flights from boston to tampa on day {i}", f"flights from tampa to boston on day {i}", 0, 0.97, 0.1)
    return pairs, vectors, table


def test_tune_fits_the_whole_decision_to_the_target_with_a_margin(embedder):
    pairs, vectors, table = _synthetic(embedder.dimension)
    target = InProcessTarget(embedder, TableVerifier(table))
    try:
        points = decision_tune.pair_points(target, pairs, vectors, [0.8, 0.9, 0.99], veto_score=0.0)
    finally:
        target.close()
    by_rule = {(p.threshold, p.band_low, p.min_score): p for p in points}
    # The threshold alone: loose serves every negative, strict serves no positive, and
    # even 0.9 serves the word-order negatives (cosine is blind to order).
    assert by_rule[(0.8, None, None)].point.false_hit_rate == 1.0
    assert by_rule[(0.9, None, None)].point.hit_rate == 0.0
    assert by_rule[(0.9, None, None)].point.false_hits == 30
    # The band from 0.8 with a score cut between the two: every positive, no negative,
    # and the reorderings above the threshold were verified and refused.
    verified = by_rule[(0.9, 0.8, 0.5)]
    assert (verified.point.hit_rate, verified.point.false_hits) == (1.0, 0)
    assert verified.verifier_share == 1.0
    assert by_rule[(0.9, 0.8, 0.95)].point.hit_rate == 0.0  # a cut above the verifier's score
    chosen = decision_tune.recommend_decision(points, 0.05)
    assert chosen is not None and chosen.band_low is not None and chosen.min_score <= 0.9
    assert (chosen.point.hit_rate, chosen.point.false_hits) == (1.0, 0)
    # With the margin, 150 negatives cannot certify a target under the Wilson bound of 0 in 150.
    assert decision_tune.recommend_decision(points, 0.01) is None
    assert decision_tune.recommend_decision(points, 0.02) is not None


def test_tune_models_the_veto_above_the_threshold(embedder):
    """Negatives in other words at cosine 0.95 (not near copies: no guard, no blind spot):
    cosine alone serves them at any threshold under 0.95; the veto refuses them, and tune's
    figures say so, as the served decision would."""
    pairs, vectors, table = _synthetic(embedder.dimension)
    for i in range(40):
        a, b = f"when does shop {i} open", f"how much is parking near shop {i} tonight"
        base = unit_vector(3000 + i, embedder.dimension)
        vectors[a] = np.array(base, dtype=np.float32)
        vectors[b] = np.array(vector_at_similarity(base, 0.95, seed=13_000 + i), dtype=np.float32)
        pairs.append(Pair(a, b, 0, "negative"))
        table[(b, a)] = 0.2
    target = InProcessTarget(embedder, TableVerifier(table))
    try:
        no_veto = decision_tune.pair_points(target, pairs, vectors, [0.9], veto_score=0.0)
        veto = decision_tune.pair_points(target, pairs, vectors, [0.9], veto_score=0.5)
    finally:
        target.close()
    without = {(p.threshold, p.band_low, p.min_score): p for p in no_veto}[(0.9, 0.8, 0.5)]
    with_veto = {(p.threshold, p.band_low, p.min_score): p for p in veto}[(0.9, 0.8, 0.5)]
    assert without.point.false_hits == 40 and without.veto_score == 0.0
    assert with_veto.point.false_hits == 0 and with_veto.point.hit_rate == 1.0 and with_veto.veto_score == 0.5
    assert with_veto.to_json()["verifier_veto_score"] == 0.5
