"""Lookups/s with the verifier on and off: 32 clients on replay traffic (the server embeds,
as in production), one server for each setting in turn, interleaved over rounds so both
see the same machine.

    python bench/verifier_load.py [--verifier DIR] [--max-candidates N] [--dataset FILE] [--clients 32] [--seconds 20]
        [--compare-max-candidates N...] [--compare-verifier DIR...] [--json FILE] [--quick]

"on" serves with --verifier DIR (default: the one the package ships), "off" with
--verifier none; everything else is the default (--max-candidates: the "on" server's
verifier_max_candidates, default the server's; --compare-max-candidates N...: one more
"on" server per value, in the same rounds; --compare-verifier DIR...: one more "on" server
per verifier, e.g. a smaller one, in the same rounds). Reports Lookups/s, p50/p99, and the
share of Lookups that asked the verifier (semcache_verifier_seconds_count / Lookups).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from semcache_server.bench import datasets
from semcache_server.bench.harness import bench_parser, default_datasets_dir, free_port, metric, serve_in_child, write_report
from semcache_server.bench.load import run_load
from semcache_server.settings import Settings


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--verifier", default="", help="the verifier served for 'on' (default: the shipped one)")
    parser.add_argument("--max-candidates", type=int, default=Settings().verifier_max_candidates,
                        help="band candidates the verifier scores per Lookup (verifier_max_candidates)")
    parser.add_argument("--compare-max-candidates", type=int, nargs="*", default=[],
                        help="more 'on' servers, one per value, in the same rounds (runs 'on_maxN')")
    parser.add_argument("--compare-verifier", type=Path, nargs="*", default=[],
                        help="more 'on' servers, one per verifier directory, in the same rounds (runs 'on_DIRNAME')")
    parser.add_argument("--dataset", type=Path, default=default_datasets_dir() / "banking77" / "dev.replay.jsonl")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warm-entries", type=int, default=2000)
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds, args.rounds, args.warm_entries = 4, 1.0, 1, 50
    texts = list(dict.fromkeys(q.text for q in datasets.load_replay(args.dataset, 300 if args.quick else None, 0)))
    servers = [("off", "none", 0), ("on", args.verifier, args.max_candidates)]
    servers += [(f"on_max{n}", args.verifier, n) for n in args.compare_max_candidates]
    servers += [(f"on_{d.name}", str(d), args.max_candidates) for d in args.compare_verifier]
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in servers}
    with tempfile.TemporaryDirectory(prefix="verifier-load-") as work:
        for round_ in range(args.rounds):
            for name, verifier, max_candidates in servers:
                address = f"127.0.0.1:{free_port()}"
                metrics_address = f"127.0.0.1:{free_port()}"
                extra = ["--metrics-listen", metrics_address]
                if verifier:
                    extra += ["--verifier", verifier]
                if max_candidates:
                    extra += ["--verifier-max-candidates", str(max_candidates)]
                run_dir = Path(work) / f"{name}-{round_}"
                run_dir.mkdir()
                with serve_in_child(address, run_dir, *extra):
                    result = run_load(
                        address, texts, concurrency_levels=[args.clients], duration_seconds=args.seconds,
                        lookup_ratio=1.0, warm_entries=args.warm_entries, seed=round_,
                    )
                    level = result["levels"][0]
                    lookups = level.get("lookups", 0) or 1
                    level["verifier_calls"] = metric(metrics_address, "semcache_verifier_seconds_count")
                    level["verifier_share"] = round(level["verifier_calls"] / lookups, 4)
                    runs[name].append(level)
    rate = {name: sum(r["lookups_per_second"] for r in rs) / len(rs) for name, rs in runs.items()}
    report = {
        "dataset": str(args.dataset), "clients": args.clients, "seconds_per_run": args.seconds, "rounds": args.rounds,
        "warm_entries": args.warm_entries, "verifier": args.verifier or "(shipped)",
        "verifier_max_candidates": args.max_candidates, "runs": runs,
        "lookups_per_second": {k: round(v, 1) for k, v in rate.items()},
        "on_vs_off": round(rate["on"] / rate["off"], 3) if rate["off"] else None,
        # Each round's own ratio (its servers ran back to back), then their median: steadier
        # than the ratio of means where the machine's speed drifts between rounds.
        "on_vs_off_per_round": {
            name: [round(r["lookups_per_second"] / o["lookups_per_second"], 3) for r, o in zip(rs, runs["off"], strict=True)]
            for name, rs in runs.items() if name != "off"
        },
    }
    report["on_vs_off_median_of_rounds"] = {
        name: round(float(np.median(ratios)), 3) for name, ratios in report["on_vs_off_per_round"].items()
    }
    write_report(report, args.json)


if __name__ == "__main__":
    main()
