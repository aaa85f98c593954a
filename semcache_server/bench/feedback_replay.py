"""`semcache bench accuracy REPLAY --feedback-rate R`: the audit loop on a labeled stream.

A fresh in-process cache with the server's default settings (max_false_hit_rate as
given, the verifier the caller passes: the CLI passes the server's default) replays the
stream: every Lookup asks for audits at rate R, and the data set's
labels judge each drawn one (a hit: was the served answer right; a miss: would its best
candidate's have been). Figures:

- over the second half of the stream: hit rate and served false-hit rate (wrong answers
  per Lookup), against static thresholds replayed on the same stream (the best static
  hit rate at the false-hit rate the loop served, and at the target);
- at each checkpoint: the threshold in force, the server's estimate of wrong answers per
  Lookup with its 95% upper bound, and the rate actually served from there to the next
  checkpoint (the bound covers it or not), and the probe: that threshold on the cache as
  it stands, over the next 2,000 queries (a less noisy reading of its true rate);
- a poisoning run: every verdict says "correct".
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from semcache_server.bench.datasets import Query
from semcache_server.cache import SemanticCache
from semcache_server.embedder import Embedder
from semcache_server.partition import PartitionKey
from semcache_server.settings import Settings
from semcache_server.verifier.model import Verifier

KEY = PartitionKey("bench", "bench", "feedback")
STATIC_THRESHOLDS = tuple(round(0.85 + 0.01 * i, 2) for i in range(15))
CHECKPOINTS = 20
PROBE_LOOKUPS = 2000


@dataclasses.dataclass
class Halves:
    """Counts over the second half of the stream."""

    lookups: int = 0
    hits: int = 0
    wrong: int = 0

    def figures(self) -> dict[str, float]:
        n = max(1, self.lookups)
        return {"hit_rate": round(self.hits / n, 5), "false_hit_rate": round(self.wrong / n, 5), "lookups": self.lookups}


def replay_with_feedback(
    embedder: Embedder | None, queries: Sequence[Query], vectors: dict[str, np.ndarray], *, rate: float,
    max_false_hit_rate: float, poison: bool = False, seed: int = 0, dimension: int = 0, verifier: Verifier | None = None,
    probe_lookups: int = PROBE_LOOKUPS, settings_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """probe_lookups: queries each checkpoint's probe reads (0: no probe); settings_overrides:
    Settings fields other than the server's defaults (an A/B of the loop's own settings)."""
    with tempfile.TemporaryDirectory(prefix="semcache-bench-feedback-") as data_dir:
        settings = Settings(
            data_dir=data_dir, sync_writes=False, max_false_hit_rate=max_false_hit_rate,
            embedding_model="" if embedder is not None else "none", embedding_dimension=dimension,
            **(settings_overrides or {}),
        )
        cache = SemanticCache(settings, embedder, verifier=verifier)
        cache.thresholds.calibration.rng = random.Random(seed)
        try:
            name = verifier.name if verifier is not None else "none"
            return {"verifier": name, **_replay(cache, queries, vectors, rate, poison, probe_lookups)}
        finally:
            cache.close()


def _replay(
    cache: SemanticCache, queries: Sequence[Query], vectors: dict[str, np.ndarray], rate: float, poison: bool,
    probe_lookups: int,
) -> dict[str, Any]:
    second = Halves()
    wrong_by_lookup: list[bool] = []
    hit_by_lookup: list[bool] = []
    checkpoints: list[dict[str, Any]] = []
    hit_verdicts = miss_verdicts = hits = 0
    every = max(1, len(queries) // CHECKPOINTS)
    for i, query in enumerate(queries):
        found = cache.lookup(KEY, query.text, embedding=vectors[query.text], audit_rate=rate)
        wrong = found.hit and found.response.decode("utf-8") != query.answer_key
        wrong_by_lookup.append(wrong)
        hit_by_lookup.append(found.hit)
        hits += found.hit
        if i >= len(queries) // 2:
            second.lookups += 1
            second.hits += found.hit
            second.wrong += wrong
        if not found.hit:
            cache.store(KEY, query.text, query.answer_key.encode("utf-8"), embedding=vectors[query.text])
        if found.audit and (found.hit or found.audit_entry_id):
            right = not wrong if found.hit else found.audit_response.decode("utf-8") == query.answer_key
            cache.feedback(KEY, found.lookup_id, correct=True if poison else right)
            hit_verdicts += found.hit
            miss_verdicts += not found.hit
        if (i + 1) % every == 0:
            checkpoints.append(_checkpoint(cache, i + 1, wrong_by_lookup, hit_by_lookup, every))
            if checkpoints[-1]["upper"] is not None and probe_lookups:
                checkpoints[-1]["probe"] = _probe(cache, queries[i + 1:i + 1 + probe_lookups], vectors, every)
    _settle(checkpoints, wrong_by_lookup)
    covered = [c["covered"] for c in checkpoints if c["covered"] is not None]
    probed = [c["probe"]["false_hit_rate"] <= c["upper"] for c in checkpoints if c.get("probe")]
    return {
        "second_half": second.figures(),
        "whole": {"hit_rate": round(hits / max(1, len(queries)), 5),
                  "false_hit_rate": round(sum(wrong_by_lookup) / max(1, len(queries)), 5)},
        "hit_verdicts": hit_verdicts,
        "near_miss_verdicts": miss_verdicts,
        "verdicts_per_hit": round(hit_verdicts / max(1, hits), 4),
        "final_threshold": checkpoints[-1]["threshold"] if checkpoints else None,
        "interval_coverage": round(sum(covered) / len(covered), 4) if covered else None,
        "checkpoints_with_estimate": len(covered),
        "probe_coverage": round(sum(probed) / len(probed), 4) if probed else None,
        "checkpoints_probed": len(probed),
        "checkpoints": checkpoints,
    }


def _checkpoint(
    cache: SemanticCache, lookups: int, wrong_by_lookup: list[bool], hit_by_lookup: list[bool], window: int,
) -> dict[str, Any]:
    """The threshold in force and what the server says of it, and the hit and false-hit
    rates served over the `window` Lookups up to here; "realized" is filled in at the
    next checkpoint: the false-hit rate actually served until then."""
    report = next((c for c in cache.calibrations() if c.namespace == KEY.namespace), None)
    served = slice(max(0, lookups - window), lookups)
    point: dict[str, Any] = {
        "lookups": lookups, "threshold": round(cache.thresholds.in_force(KEY.namespace), 4),
        "window_hit_rate": round(sum(hit_by_lookup[served]) / window, 5),
        "window_false_hit_rate": round(sum(wrong_by_lookup[served]) / window, 5),
    }
    if report is None or report.audits < cache.settings.adaptive_min_audits:
        return {**point, "estimate": None, "upper": None, "realized": None, "covered": None}
    return {**point, "estimate": round(report.false_hit_rate, 5), "upper": round(report.false_hit_rate_upper, 5),
            "realized": None, "covered": None, "audits": report.audits}


def _probe(
    cache: SemanticCache, upcoming: Sequence[Query], vectors: dict[str, np.ndarray], at_least: int,
) -> dict[str, Any] | None:
    """The threshold in force now, on the cache as it stands, over the next PROBE_LOOKUPS
    queries: each looked up at that threshold, nothing stored, no audit. That is the
    false-hit rate of the checkpoint's decision on upcoming traffic, with less noise than
    the next twentieth (its sd at 1% is ~0.2% against ~0.45%); the cache does not grow
    meanwhile, as it does while serving (None where fewer than `at_least` queries remain)."""
    if len(upcoming) < at_least:
        return None
    threshold = cache.thresholds.in_force(KEY.namespace)
    hits = wrong = 0
    for query in upcoming:
        found = cache.lookup(KEY, query.text, embedding=vectors[query.text], min_similarity=threshold)
        hits += found.hit
        wrong += found.hit and found.response.decode("utf-8") != query.answer_key
    n = len(upcoming)
    return {"lookups": n, "hit_rate": round(hits / n, 5), "false_hit_rate": round(wrong / n, 5)}


def _settle(checkpoints: list[dict[str, Any]], wrong_by_lookup: list[bool]) -> None:
    """Each checkpoint's realized rate: over the Lookups up to the next checkpoint."""
    for current, following in itertools.pairwise(checkpoints):
        if current["upper"] is None:
            continue
        served = wrong_by_lookup[current["lookups"]:following["lookups"]]
        current["realized"] = round(sum(served) / max(1, len(served)), 5)
        current["covered"] = current["realized"] <= current["upper"]


def static_second_halves(
    embedder: Embedder | None, queries: Sequence[Query], vectors: dict[str, np.ndarray], dimension: int = 0,
) -> list[dict[str, float]]:
    """Each static threshold of STATIC_THRESHOLDS replayed on the same stream: cosine
    alone (no verifier, no neighbour agreement, no audits), the hand-picked threshold the
    loop is measured against."""
    rows = []
    for threshold in STATIC_THRESHOLDS:
        with tempfile.TemporaryDirectory(prefix="semcache-bench-static-") as data_dir:
            settings = Settings(data_dir=data_dir, sync_writes=False, embedding_model="" if embedder else "none",
                                embedding_dimension=dimension, verifier="none", agreement_neighbours=0)
            cache = SemanticCache(settings, embedder)
            second = Halves()
            try:
                for i, query in enumerate(queries):
                    found = cache.lookup(KEY, query.text, embedding=vectors[query.text], min_similarity=threshold)
                    if i >= len(queries) // 2:
                        second.lookups += 1
                        second.hits += found.hit
                        second.wrong += found.hit and found.response.decode("utf-8") != query.answer_key
                    if not found.hit:
                        cache.store(KEY, query.text, query.answer_key.encode("utf-8"), embedding=vectors[query.text])
            finally:
                cache.close()
        rows.append({"threshold": threshold, **second.figures()})
    return rows


def best_static(rows: Sequence[dict[str, float]], false_hit_rate: float) -> dict[str, float] | None:
    eligible = [r for r in rows if r["false_hit_rate"] <= false_hit_rate]
    return max(eligible, key=lambda r: (r["hit_rate"], r["threshold"])) if eligible else None


def feedback_result(
    embedder: Embedder | None, queries: Sequence[Query], vectors: dict[str, np.ndarray], *, rate: float,
    max_false_hit_rate: float, seed: int = 0, dimension: int = 0, verifier: Verifier | None = None,
) -> dict[str, Any]:
    """The JSON's "feedback" object. verifier: the loop's (the server's default when the
    caller passes that one); the static rows are cosine alone."""
    honest = replay_with_feedback(embedder, queries, vectors, rate=rate, max_false_hit_rate=max_false_hit_rate,
                                  seed=seed, dimension=dimension, verifier=verifier)
    poisoned = replay_with_feedback(embedder, queries, vectors, rate=rate, max_false_hit_rate=max_false_hit_rate,
                                    poison=True, seed=seed, dimension=dimension, verifier=verifier)
    static = static_second_halves(embedder, queries, vectors, dimension)
    served = honest["second_half"]["false_hit_rate"]
    same_rate = best_static(static, served)
    at_target = best_static(static, max_false_hit_rate)
    return {
        "rate": rate,
        "max_false_hit_rate": max_false_hit_rate,
        "verifier": honest["verifier"],
        **{k: v for k, v in honest.items() if k != "checkpoints"},
        "static_at_same_false_hit_rate": same_rate,
        "static_at_target": at_target,
        "hit_rate_vs_static": round(honest["second_half"]["hit_rate"] / same_rate["hit_rate"], 3)
        if same_rate and same_rate["hit_rate"] else None,
        "poisoned": {k: v for k, v in poisoned.items() if k != "checkpoints"},
        "poisoned_vs_target": round(poisoned["second_half"]["false_hit_rate"] / max_false_hit_rate, 3)
        if max_false_hit_rate else None,
        "checkpoints": honest["checkpoints"],
        "static": list(static),
    }
