"""Tuning the whole decision to a false-hit target: the threshold, and with a verifier the
gray band's low end and the score a band candidate needs (issue 17, "the knob users
think in").

Every rule is the server's own decision (semcache_server/decision.py) run through the
target, with per-request settings:

pairs:  one Lookup per pair with the threshold at 1.0 and the band from -1, so the
        verifier judges every candidate the guard lets through; a rule (t, low, s) then
        hits when the pair is exact, or its cosine is >= t and its texts are not a
        near copy or a negation of each other and its verifier score is >= the veto
        score (verifier_veto_score, the setting's; 0: no veto), or it is in the band
        (cosine in [low, t), or a near copy or a negation at >= t: guard.cosine_is_blind)
        and its verifier score is >= s. That is what the decision does with one stored entry.
replay: each rule replayed in full (what earlier misses stored depends on it), over a
        coarser grid.

A rule is recommended when its false-hit rate's 95% upper bound (Wilson) is at most the
target, so that a setting tuned on one sample holds on unseen data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from semcache_server.bench.accuracy import Point, false_hit_upper_bound, progress, run_replay
from semcache_server.bench.datasets import Pair, Query
from semcache_server.bench.targets import Target
from semcache_server.guard import cosine_is_blind

BAND_LOWS = (0.7, 0.75, 0.8, 0.85)
MIN_SCORES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
REPLAY_THRESHOLDS = (0.88, 0.92, 0.96)
REPLAY_BAND_LOWS = (0.75, 0.8, 0.85)
REPLAY_MIN_SCORES = (0.5, 0.8, 0.95)


@dataclasses.dataclass(frozen=True)
class DecisionPoint:
    """One rule's figures. band_low None: the threshold alone (no verifier)."""

    threshold: float
    band_low: float | None
    min_score: float | None
    point: Point
    verifier_share: float  # lookups that asked the verifier
    veto_score: float | None = None  # with a band: the verifier's veto at or above the threshold (0: none)

    def to_json(self) -> dict:
        return {
            "threshold": self.threshold, "verifier_band_low": self.band_low, "verifier_min_score": self.min_score,
            "verifier_veto_score": self.veto_score,
            "hit_rate": round(self.point.hit_rate, 6), "false_hit_rate": round(self.point.false_hit_rate, 6),
            "false_hit_rate_upper": round(false_hit_upper_bound(self.point), 6),
            "false_hits": self.point.false_hits, "negatives": self.point.negatives, "lookups": self.point.lookups,
            "verifier_share": round(self.verifier_share, 4),
        }


@dataclasses.dataclass(frozen=True)
class _Judged:
    label: int
    exact: bool
    guarded: bool
    cosine_is_blind: bool  # verified even above the threshold
    similarity: float
    score: float | None  # None: not verified (exact, guarded, or at cosine 1.0)


def judge_pairs(target: Target, pairs: Sequence[Pair], vectors: dict[str, np.ndarray]) -> list[_Judged]:
    out = []
    for pair in progress(pairs, len(pairs), "pairs, verified"):
        entry_id = target.store("decision", pair.a, b"a", vectors[pair.a])
        found = target.lookup(
            "decision", pair.b, vectors[pair.b], min_similarity=1.0, verifier_band_low=-1.0, verifier_min_score=1.0,
            verifier_veto_score=1.0,
        )
        target.delete("decision", entry_id)
        out.append(_Judged(
            pair.label, found.exact, bool(found.guard_reason) and not found.exact, cosine_is_blind(pair.b, pair.a),
            found.similarity, found.verifier_score,
        ))
    return out


def _pair_point(
    judged: Sequence[_Judged], threshold: float, band_low: float | None, min_score: float | None, veto_score: float = 0.0,
) -> DecisionPoint:
    true_hits = false_hits = asked = 0
    for j in judged:
        if j.exact:
            hit = True
        elif j.guarded:
            hit = False
        elif band_low is None or j.score is None:
            hit = j.similarity >= threshold
        else:
            verified = (band_low <= j.similarity < threshold) or (j.similarity >= threshold and j.cosine_is_blind)
            vetoable = j.similarity >= threshold and not verified and veto_score > 0
            asked += verified or vetoable
            if verified:
                hit = j.score >= (min_score or 0.0)
            else:
                hit = j.similarity >= threshold and (not vetoable or j.score >= veto_score)
        true_hits += hit and j.label == 1
        false_hits += hit and j.label == 0
    positives = sum(j.label == 1 for j in judged)
    negatives = len(judged) - positives
    hits = true_hits + false_hits
    point = Point(
        threshold=threshold, hit_rate=true_hits / positives if positives else 0.0,
        false_hit_rate=false_hits / negatives if negatives else 0.0, precision=true_hits / hits if hits else 1.0,
        hits=hits, lookups=len(judged), false_hits=false_hits, negatives=negatives,
    )
    return DecisionPoint(threshold, band_low, min_score, point, asked / max(1, len(judged)),
                         veto_score if band_low is not None else None)


def pair_points(
    target: Target, pairs: Sequence[Pair], vectors: dict[str, np.ndarray], thresholds: Sequence[float],
    veto_score: float,
) -> list[DecisionPoint]:
    """Every rule of the grid on the pairs: the thresholds alone, then with each band (and
    veto_score, the setting the served decision will use, at or above the threshold)."""
    judged = judge_pairs(target, pairs, vectors)
    points = [_pair_point(judged, t, None, None) for t in thresholds]
    if all(j.score is None for j in judged):  # the target serves no verifier
        return points
    points += [
        _pair_point(judged, t, low, s, veto_score) for t in thresholds for low in BAND_LOWS if low < t for s in MIN_SCORES
    ]
    return points


def replay_points(
    target: Target, queries: Sequence[Query], vectors: dict[str, np.ndarray], thresholds: Sequence[float],
    veto_score: float,
) -> list[DecisionPoint]:
    """The thresholds alone (verifier off: band from 1.0, no veto), then the coarse band grid
    (each with the setting's veto at or above the threshold, as the served decision)."""
    points = []
    for t in thresholds:
        point, asked = run_replay(target, queries, vectors, t, band={"verifier_band_low": 1.0, "verifier_veto_score": 0.0})
        points.append(DecisionPoint(t, None, None, point, asked / max(1, len(queries))))
    for t in REPLAY_THRESHOLDS:
        for low in REPLAY_BAND_LOWS:
            for s in REPLAY_MIN_SCORES:
                band = {"verifier_band_low": low, "verifier_min_score": s, "verifier_veto_score": veto_score}
                point, asked = run_replay(target, queries, vectors, t, band=band)
                points.append(DecisionPoint(t, low, s, point, asked / max(1, len(queries)), veto_score))
                if not asked and low == REPLAY_BAND_LOWS[0] and s == REPLAY_MIN_SCORES[0]:
                    return points  # nothing asked the verifier: the target serves none
    return points


def recommend_decision(
    points: Sequence[DecisionPoint], max_false_hit_rate: float, margin: bool = True,
) -> DecisionPoint | None:
    """The rule with the highest hit rate whose false-hit rate's upper bound (margin=False:
    the rate itself) is at most the target; among equals, the one that asks the verifier least."""
    def bound(p: DecisionPoint) -> float:
        return false_hit_upper_bound(p.point) if margin else p.point.false_hit_rate

    eligible = [p for p in points if bound(p) <= max_false_hit_rate]
    if not eligible:
        return None
    return max(eligible, key=lambda p: (round(p.point.hit_rate, 6), -p.verifier_share, p.threshold))
