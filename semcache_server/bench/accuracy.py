"""Hit rate and false-hit rate on labeled data, per threshold, and the threshold to use.

pairs:  store `a` alone in a partition, look up `b`. hit_rate = hits on label-1 pairs /
        label-1 pairs; false_hit_rate = hits on label-0 pairs / label-0 pairs;
        precision = hits on label-1 pairs / hits.
replay: replay the stream through one partition: a hit is correct when the matched
        entry's answer_key equals the query's; a miss stores the query with its key.
        hit_rate = hits / lookups; false_hit_rate = wrong hits / lookups;
        precision = correct hits / hits.

In pairs mode one lookup per pair (at min_similarity -1, so the best candidate always
comes back) decides every threshold: the partition holds only `a`, so the lookup hits
at threshold t exactly when it was exact, or its similarity is >= t and the lexical
guard did not refuse it (the guard does not depend on the threshold). Replay depends on
what earlier misses stored, so it is replayed once per threshold.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from semcache_server.bench.datasets import PAIRS, Pair, Query
from semcache_server.bench.targets import Target
from semcache_server.decision import THRESHOLD_VERIFIED, VERIFIER, VERIFIER_REJECTED
from semcache_server.embedder import Embedder

EMBED_BATCH = 256


@dataclasses.dataclass
class Point:
    """One threshold's figures; the keys of a `sweep` item in the JSON."""

    threshold: float
    hit_rate: float
    false_hit_rate: float
    precision: float
    hits: int
    lookups: int
    false_hits: int = 0  # the false-hit rate's numerator ...
    negatives: int = 0  # ... and denominator (label-0 pairs; replay: lookups)


def parse_thresholds(spec: str) -> list[float]:
    """'0.70:0.99:0.01' (start:stop:step, stop included) or '0.8,0.85,0.9'."""
    try:
        if ":" in spec:
            start, stop, step = (float(x) for x in spec.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = round((stop - start) / step) + 1
            values = [round(start + i * step, 6) for i in range(count)]
        else:
            values = [float(x) for x in spec.split(",")]
    except ValueError:
        raise SystemExit(f"--thresholds takes START:STOP:STEP or a comma list, got {spec!r}") from None
    if not values or any(not -1.0 <= v <= 1.0 for v in values):
        raise SystemExit(f"--thresholds must lie within -1..1, got {spec!r}")
    return values


def progress(iterable: Iterable, total: int, description: str) -> Iterable:
    """A progress bar on an interactive terminal; the plain iterable otherwise."""
    if not sys.stderr.isatty() or total < 500:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=description, unit="q", leave=False)


def embed_all(embedder: Embedder, texts: Iterable[str]) -> dict[str, np.ndarray]:
    """Every distinct text embedded exactly once."""
    unique = list(dict.fromkeys(texts))
    vectors: dict[str, np.ndarray] = {}
    batches = range(0, len(unique), EMBED_BATCH)
    for start in progress(batches, len(batches), "embedding"):
        batch = unique[start:start + EMBED_BATCH]
        for text, vector in zip(batch, embedder.embed(batch), strict=True):
            vectors[text] = vector
    return vectors


@dataclasses.dataclass
class PairOutcome:
    label: int
    kind: str
    exact: bool
    similarity: float
    guarded: bool = False  # the lexical guard refused the match, at any threshold

    def hit_at(self, threshold: float) -> bool:
        return self.exact or (not self.guarded and self.similarity >= threshold)


def run_pairs(target: Target, pairs: Sequence[Pair], vectors: dict[str, np.ndarray]) -> list[PairOutcome]:
    outcomes = []
    for pair in progress(pairs, len(pairs), "pairs"):
        entry_id = target.store("pairs", pair.a, b"a", vectors[pair.a])
        found = target.lookup("pairs", pair.b, vectors[pair.b], min_similarity=-1.0)
        target.delete("pairs", entry_id)
        outcomes.append(PairOutcome(pair.label, pair.kind, found.exact, found.similarity, bool(found.guard_reason)))
    return outcomes


VERIFIER_PATHS = (VERIFIER, VERIFIER_REJECTED, THRESHOLD_VERIFIED)  # the decision paths that asked the verifier


def default_figures(target: Target, mode: str, items: Sequence[Pair] | Sequence[Query], vectors: dict[str, np.ndarray],
                    threshold: float) -> tuple[Point, float]:
    """(figures, share of lookups that asked the verifier) of the target's default decision:
    every lookup without a per-request setting. `threshold`: the default min_similarity, reported."""
    asked = 0
    if mode == PAIRS:
        outcomes: list[PairOutcome] = []
        hit_of: dict[int, bool] = {}  # id(outcome) -> whether the default decision served it
        for pair in progress(items, len(items), "default"):
            entry_id = target.store("default", pair.a, b"a", vectors[pair.a])
            found = target.lookup("default", pair.b, vectors[pair.b], min_similarity=None)
            target.delete("default", entry_id)
            asked += found.decided_by in VERIFIER_PATHS
            outcomes.append(PairOutcome(pair.label, pair.kind, found.exact, found.similarity))
            hit_of[id(outcomes[-1])] = found.hit
        point = pairs_point(outcomes, threshold, hit=lambda o: hit_of[id(o)])
    else:
        point, asked = run_replay(target, items, vectors, threshold, use_default=True)  # type: ignore[arg-type]
    return point, asked / max(1, len(items))


def pairs_point(outcomes: Sequence[PairOutcome], threshold: float, hit: Callable[[PairOutcome], bool] | None = None) -> Point:
    hit = hit or (lambda o: o.hit_at(threshold))
    positives = sum(1 for o in outcomes if o.label == 1)
    negatives = len(outcomes) - positives
    true_hits = sum(1 for o in outcomes if o.label == 1 and hit(o))
    false_hits = sum(1 for o in outcomes if o.label == 0 and hit(o))
    hits = true_hits + false_hits
    return Point(
        threshold=threshold,
        hit_rate=true_hits / positives if positives else 0.0,
        false_hit_rate=false_hits / negatives if negatives else 0.0,
        precision=true_hits / hits if hits else 1.0,
        hits=hits,
        lookups=len(outcomes),
        false_hits=false_hits,
        negatives=negatives,
    )


def false_hit_rate_by_kind(outcomes: Sequence[PairOutcome], threshold: float) -> dict[str, float]:
    """For each kind of negative pair: the share served a wrong answer at `threshold`."""
    kinds: dict[str, list[bool]] = {}
    for o in outcomes:
        if o.label == 0:
            kinds.setdefault(o.kind or "negative", []).append(o.hit_at(threshold))
    return {kind: round(sum(hits) / len(hits), 5) for kind, hits in sorted(kinds.items())}


def run_replay(
    target: Target, queries: Sequence[Query], vectors: dict[str, np.ndarray], threshold: float, *,
    exact_only: bool = False, use_default: bool = False, band: dict[str, float] | None = None,
) -> Any:
    """Replay the stream through a fresh partition at one threshold: its Point.

    exact_only: the plain key-value baseline; only exact-tier hits count, and any
    other lookup is a miss that stores the query. use_default: the target's default
    decision (no per-request threshold); returns (Point, lookups that asked the verifier).
    band: this replay's verifier_band_low and verifier_min_score (see decision_tune.py);
    returns (Point, lookups that asked the verifier) too.
    """
    kind = "exact" if exact_only else "default" if use_default else "semantic"
    version = f"replay-{threshold}-{kind}" + "".join(f"-{v}" for v in (band or {}).values())
    hits = wrong = asked = 0
    request_threshold = None if use_default else 1.0 if exact_only else threshold
    for query in progress(queries, len(queries), f"replay {threshold:.2f}"):
        found = target.lookup(version, query.text, vectors[query.text], min_similarity=request_threshold, **(band or {}))
        asked += found.decided_by in VERIFIER_PATHS
        if found.hit and (found.exact or not exact_only):
            hits += 1
            wrong += found.response.decode("utf-8") != query.answer_key
        else:
            target.store(version, query.text, query.answer_key.encode("utf-8"), vectors[query.text])
    target.drop(version)
    lookups = len(queries)
    point = Point(
        threshold=threshold,
        hit_rate=hits / lookups if lookups else 0.0,
        false_hit_rate=wrong / lookups if lookups else 0.0,
        precision=(hits - wrong) / hits if hits else 1.0,
        hits=hits,
        lookups=lookups,
        false_hits=wrong,
        negatives=lookups,
    )
    return (point, asked) if use_default or band is not None else point


def recommend(sweep: Sequence[Point], target_false_hit_rate: float) -> Point | None:
    """The highest hit rate whose false-hit rate is at most the target (ties: the stricter threshold)."""
    eligible = [p for p in sweep if p.false_hit_rate <= target_false_hit_rate]
    if not eligible:
        return None
    return max(eligible, key=lambda p: (p.hit_rate, p.threshold))


# One-sided 95%: the false-hit rate is at most the bound with 95% confidence.
MARGIN_Z = 1.645


def false_hit_upper_bound(point: Point, z: float = MARGIN_Z) -> float:
    """Wilson score upper bound of the point's false-hit rate: what a setting tuned on
    this sample can be expected to keep to on unseen data, not just on this sample."""
    n = point.negatives
    if n == 0:
        return 1.0
    p = point.false_hits / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def recommend_with_margin(sweep: Sequence[Point], max_false_hit_rate: float, z: float = MARGIN_Z) -> Point | None:
    """The highest hit rate whose false-hit rate's upper bound is at most the target."""
    eligible = [p for p in sweep if false_hit_upper_bound(p, z) <= max_false_hit_rate]
    if not eligible:
        return None
    return max(eligible, key=lambda p: (p.hit_rate, p.threshold))


def best_hit_rate_at(sweep: Sequence[Point], false_hit_rate: float) -> Point | None:
    return recommend(sweep, false_hit_rate)


def evaluate(
    target: Target,
    mode: str,
    items: Sequence[Pair] | Sequence[Query],
    vectors: dict[str, np.ndarray],
    thresholds: Sequence[float],
) -> tuple[list[Point], Point, dict]:
    """(sweep, exact-match baseline, extras) for one dataset."""
    if mode == PAIRS:
        outcomes = run_pairs(target, items, vectors)  # type: ignore[arg-type]
        sweep = [pairs_point(outcomes, t) for t in thresholds]
        baseline = pairs_point(outcomes, 1.0, hit=lambda o: o.exact)
        extras = {"outcomes": outcomes}
    else:
        sweep = [run_replay(target, items, vectors, t) for t in thresholds]  # type: ignore[arg-type]
        baseline = run_replay(target, items, vectors, 1.0, exact_only=True)  # type: ignore[arg-type]
        extras = {}
    return sweep, baseline, extras
