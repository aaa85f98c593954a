"""Accuracy results: the JSON other tools read, the terminal table, the plot."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semcache_server.bench.accuracy import Point, recommend

# The rates bench/README.md reports hit rate at.
REPORTED_FALSE_HIT_RATES = (0.01, 0.05)


def point_dict(point: Point | None) -> dict | None:
    if point is None:
        return None
    d = dataclasses.asdict(point)
    for key in ("threshold", "hit_rate", "false_hit_rate", "precision"):
        d[key] = round(d[key], 6)
    return d


def build_result(
    *,
    dataset: str,
    mode: str,
    model: str,
    n: int,
    target_false_hit_rate: float,
    sweep: Sequence[Point],
    baseline: Point,
    seed: int,
    limit: int | None,
    by_kind: dict[str, float] | None = None,
    default: Point | None = None,
    default_verifier_share: float | None = None,
    with_margin: Point | None = None,
) -> dict:
    """The JSON document; the first seven keys are the stable contract. `default`: the
    figures of the server's default decision (verifier included), keys as a sweep row."""
    recommended = recommend(sweep, target_false_hit_rate)
    result = {
        "dataset": dataset,
        "mode": mode,
        "model": model,
        "n": n,
        "target_false_hit_rate": target_false_hit_rate,
        "sweep": [point_dict(p) for p in sweep],
        "recommended": point_dict(recommended),
        "exact_baseline": point_dict(baseline),
        "best_at_false_hit_rate": {
            str(rate): point_dict(recommend(sweep, rate)) for rate in REPORTED_FALSE_HIT_RATES
        },
        "seed": seed,
        "limit": limit,
    }
    if by_kind is not None:
        result["false_hit_rate_by_kind_at_recommended"] = by_kind
    # What `tune` applies: the best setting whose false-hit rate's 95% upper bound
    # (Wilson) is at most the target, so that it holds on unseen data too.
    result["recommended_with_margin"] = point_dict(with_margin)
    if default is not None:
        result["default"] = point_dict(default)
        result["default_verifier_share"] = default_verifier_share
    return result


def write_json(result: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def table(result: dict) -> str:
    lines = [
        f"{result['dataset']}  mode={result['mode']}  n={result['n']}  model={result['model']}",
        f"{'threshold':>9}  {'hit_rate':>8}  {'false_hit':>9}  {'precision':>9}  {'hits':>6}  {'lookups':>7}",
    ]
    recommended = result["recommended"]
    for p in result["sweep"]:
        mark = "  <- recommended" if recommended and p["threshold"] == recommended["threshold"] else ""
        lines.append(
            f"{p['threshold']:>9.3f}  {p['hit_rate']:>8.4f}  {p['false_hit_rate']:>9.4f}  "
            f"{p['precision']:>9.4f}  {p['hits']:>6}  {p['lookups']:>7}{mark}"
        )
    b = result["exact_baseline"]
    lines.append(
        f"exact-match only (a plain key-value cache): hit_rate={b['hit_rate']:.4f} "
        f"false_hit_rate={b['false_hit_rate']:.4f}"
    )
    target = result["target_false_hit_rate"]
    if recommended:
        lines.append(
            f"recommended min_similarity={recommended['threshold']:.3f}: hit_rate={recommended['hit_rate']:.4f} "
            f"at false_hit_rate={recommended['false_hit_rate']:.4f} (target <= {target})"
        )
    else:
        lines.append(f"no threshold in the sweep keeps the false-hit rate at or below {target}")
    margin = result.get("recommended_with_margin")
    if margin:
        lines.append(
            f"with a 95% margin (what tune applies): min_similarity={margin['threshold']:.3f}, "
            f"hit_rate={margin['hit_rate']:.4f}, false_hit_rate={margin['false_hit_rate']:.4f}"
        )
    if result.get("default"):
        d = result["default"]
        lines.append(
            f"server defaults (min_similarity={d['threshold']:.2f}, verifier included): hit_rate={d['hit_rate']:.4f} "
            f"false_hit_rate={d['false_hit_rate']:.4f}; {result['default_verifier_share']:.1%} of lookups asked the verifier"
        )
    if "false_hit_rate_by_kind_at_recommended" in result:
        kinds = ", ".join(f"{k}={v:.4f}" for k, v in result["false_hit_rate_by_kind_at_recommended"].items())
        lines.append(f"false hits by kind of negative at the recommended threshold: {kinds}")
    return "\n".join(lines)


def plot(result: dict, path: str | Path) -> None:
    """Rates against threshold, and hit rate against false-hit rate; with --feedback-rate,
    a second row: the loop's rates over the stream, and its estimate and bound against
    the rate it then served. Without matplotlib: SystemExit naming the extra to install
    (callers write the JSON first)."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "semcache: --plot needs matplotlib, which this install lacks: pip install 'semcache[bench]' "
            "(or scripts/install-deps --bench); the other results were written"
        ) from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = result["sweep"]
    thresholds = [p["threshold"] for p in sweep]
    hit = [p["hit_rate"] for p in sweep]
    false_hit = [p["false_hit_rate"] for p in sweep]
    feedback = result.get("feedback")
    fig, axes = plt.subplots(2 if feedback else 1, 2, figsize=(11, 8.4 if feedback else 4.2), squeeze=False)
    left, right = axes[0]
    left.plot(thresholds, hit, marker=".", label="hit rate")
    left.plot(thresholds, false_hit, marker=".", label="false-hit rate")
    left.axhline(result["target_false_hit_rate"], color="grey", linestyle=":", label="target false-hit rate")
    if result["recommended"]:
        left.axvline(result["recommended"]["threshold"], color="green", linestyle="--", label="recommended")
    left.set_xlabel("min_similarity (cosine)")
    left.set_ylabel("rate")
    left.legend()
    left.grid(alpha=0.3)
    right.plot(false_hit, hit, marker=".")
    base = result["exact_baseline"]
    right.scatter([base["false_hit_rate"]], [base["hit_rate"]], color="red", zorder=3, label="exact match only")
    right.set_xlabel("false-hit rate")
    right.set_ylabel("hit rate")
    right.legend()
    right.grid(alpha=0.3)
    if feedback:
        _plot_feedback(feedback, *axes[1])
    fig.suptitle(f"{result['dataset']} ({result['mode']}, n={result['n']}, {result['model']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_feedback(feedback: dict, over_stream: Any, bound: Any) -> None:
    """The audit loop: served rates per window of the stream; the server's estimate and
    95% upper bound at each checkpoint against the rate served over the next window."""
    points = feedback["checkpoints"]
    lookups = [p["lookups"] for p in points]
    over_stream.plot(lookups, [p["window_hit_rate"] for p in points], marker=".", label="hit rate")
    over_stream.plot(lookups, [p["window_false_hit_rate"] for p in points], marker=".", label="false-hit rate")
    over_stream.axhline(feedback["max_false_hit_rate"], color="grey", linestyle=":", label="max_false_hit_rate")
    over_stream.set_xlabel("Lookups (the loop, per window)")
    over_stream.set_ylabel("rate")
    over_stream.legend()
    over_stream.grid(alpha=0.3)
    known = [p for p in points if p["upper"] is not None]
    x = [p["lookups"] for p in known]
    bound.plot(x, [p["estimate"] for p in known], marker=".", label="estimate")
    bound.plot(x, [p["upper"] for p in known], marker=".", label="95% upper bound")
    settled = [p for p in known if p["realized"] is not None]
    bound.plot([p["lookups"] for p in settled], [p["realized"] for p in settled], marker="x", linestyle="",
               label="served over the next window")
    probed = [p for p in known if p.get("probe")]
    bound.plot([p["lookups"] for p in probed], [p["probe"]["false_hit_rate"] for p in probed], marker="+",
               linestyle="", label="that threshold on the next 2,000 (probe)")
    bound.axhline(feedback["max_false_hit_rate"], color="grey", linestyle=":")
    bound.set_xlabel("Lookups")
    bound.set_ylabel("false hits per Lookup")
    bound.legend()
    bound.grid(alpha=0.3)


def feedback_summary(feedback: dict) -> str:
    """The --feedback-rate figures in a few lines."""
    second, poisoned = feedback["second_half"], feedback["poisoned"]["second_half"]
    static = feedback["static_at_same_false_hit_rate"]
    lines = [
        f"feedback rate={feedback['rate']} max_false_hit_rate={feedback['max_false_hit_rate']}: "
        f"verdicts on {feedback['verdicts_per_hit']:.1%} of hits (+{feedback['near_miss_verdicts']} on near misses), "
        f"final threshold {feedback['final_threshold']}",
        f"  second half: hit_rate={second['hit_rate']:.4f} false_hit_rate={second['false_hit_rate']:.4f}",
        "  best static at that false-hit rate: "
        + (f"threshold {static['threshold']} hit_rate={static['hit_rate']:.4f} "
           f"false_hit_rate={static['false_hit_rate']:.4f} (x{feedback['hit_rate_vs_static']})" if static else "none"),
        f"  interval coverage (the 95% upper bound >= the realized rate): {feedback['interval_coverage']} "
        f"of {feedback['checkpoints_with_estimate']} checkpoints",
        f"  probe coverage (the bound >= that threshold's rate on the next 2,000 queries, nothing stored): "
        f"{feedback.get('probe_coverage')} of {feedback.get('checkpoints_probed', 0)} checkpoints",
        f"  poisoned (every verdict 'correct'): second-half false_hit_rate={poisoned['false_hit_rate']:.4f} "
        f"(x{feedback['poisoned_vs_target']} the target), hit_rate={poisoned['hit_rate']:.4f}",
    ]
    return "\n".join(lines)


def decision_summary(decision: dict | None, target_false_hit_rate: float) -> str:
    """One line on the recommended whole decision (bench tune with a verifier)."""
    if decision is None:
        return f"decision: no rule keeps the false-hit rate's 95% upper bound under {target_false_hit_rate:.2%}"
    band = (
        f"band from {decision['verifier_band_low']}, verifier score >= {decision['verifier_min_score']}"
        if decision["verifier_band_low"] is not None else "no band"
    )
    return (
        f"decision: threshold {decision['threshold']}, {band}: hit rate {decision['hit_rate']:.2%}, false-hit rate "
        f"{decision['false_hit_rate']:.2%} (95% upper bound {decision['false_hit_rate_upper']:.2%}), "
        f"verifier asked on {decision['verifier_share']:.1%} of lookups"
    )
