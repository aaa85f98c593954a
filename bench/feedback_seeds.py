"""The audit loop of `semcache bench accuracy --feedback-rate` over several stream orders.

One replay order is one draw: the loop's second-half figures move with the order (which
question comes first, which audits are drawn). For each seed (the stream's shuffle and
the audit draw), and each rule compared, the loop's second half (hit rate, wrong answers
per Lookup, final threshold) against the best static cosine threshold at that false-hit
rate on the same order (x: the hit-rate ratio, the issue's 2x target). Rules:

- "strict": the server's defaults (a namespace is held at uncertified_min_similarity
  until its audits certify a threshold);
- "configured": uncertified_min_similarity = -1, the configured threshold held until
  certified (tightened only where the point estimate is over the target).

No probe and no poisoning run (those are in `semcache bench accuracy`).

    python bench/feedback_seeds.py ../shared/datasets/hwu64/dev.replay.jsonl --seeds 0,1,2 [--json FILE] [--quick]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from semcache_server.bench import accuracy, datasets
from semcache_server.bench.feedback_replay import best_static, replay_with_feedback, static_second_halves
from semcache_server.bench.harness import bench_parser, default_datasets_dir, write_report
from semcache_server.bench.targets import default_verifier
from semcache_server.embedder import load_embedder
from semcache_server.settings import Settings

RULES = {"strict": {}, "configured": {"uncertified_min_similarity": -1.0}}


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("dataset", type=Path, nargs="?", default=default_datasets_dir() / "hwu64" / "dev.replay.jsonl")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rate", type=float, default=0.1, help="audits per eligible Lookup")
    parser.add_argument("--max-false-hit-rate", type=float, default=0.01)
    parser.add_argument("--limit", type=int, default=None, help="the first N queries of each order")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.limit = "0", 300
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = Settings()
    embedder = load_embedder(settings.embedding_model, settings.embedding_backend)
    verifier = default_verifier()
    orders = {seed: datasets.load_replay(args.dataset, args.limit, seed) for seed in seeds}
    vectors = accuracy.embed_all(embedder, {q.text for order in orders.values() for q in order})
    rows = []
    for seed, queries in orders.items():
        started = time.monotonic()
        static = static_second_halves(embedder, queries, vectors)
        for rule, overrides in RULES.items():
            loop = replay_with_feedback(
                embedder, queries, vectors, rate=args.rate, max_false_hit_rate=args.max_false_hit_rate, seed=seed,
                verifier=verifier, probe_lookups=0, settings_overrides=overrides,
            )
            rows.append(_row(seed, rule, loop, static))
            print(_line(rows[-1]), flush=True)
        print(f"seed {seed}: {time.monotonic() - started:.0f} s", flush=True)
    result: dict[str, Any] = {
        "dataset": str(args.dataset), "seeds": seeds, "rate": args.rate,
        "max_false_hit_rate": args.max_false_hit_rate, "verifier": verifier.name if verifier else "none", "rows": rows,
    }
    write_report(result, args.json)


def _row(seed: int, rule: str, loop: dict[str, Any], static: list[dict[str, float]]) -> dict[str, Any]:
    second = loop["second_half"]
    same = best_static(static, second["false_hit_rate"])
    return {
        "seed": seed, "rule": rule, "hit_rate": second["hit_rate"], "false_hit_rate": second["false_hit_rate"],
        "final_threshold": loop["final_threshold"], "static_at_same_false_hit_rate": same,
        "hit_rate_vs_static": round(second["hit_rate"] / same["hit_rate"], 3) if same and same["hit_rate"] else None,
        # the bound against the rate served over the next twentieth, at each checkpoint with an estimate
        "checkpoints_covered": sum(bool(c["covered"]) for c in loop["checkpoints"]),
        "checkpoints_with_estimate": loop["checkpoints_with_estimate"],
    }


def _line(row: dict[str, Any]) -> str:
    same = row["static_at_same_false_hit_rate"]
    static = f"static {same['threshold']}: {same['hit_rate']:.2%} / {same['false_hit_rate']:.2%}" if same else "no static"
    return (f"seed {row['seed']} {row['rule']:>10}: {row['hit_rate']:.2%} / {row['false_hit_rate']:.2%} "
            f"(final {row['final_threshold']}), {static}, x{row['hit_rate_vs_static']}, "
            f"bound covered {row['checkpoints_covered']} of {row['checkpoints_with_estimate']}")


if __name__ == "__main__":
    main()
