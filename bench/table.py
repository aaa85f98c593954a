"""Prints the markdown table of bench/README.md from bench/results/accuracy-*.json.

    python bench/table.py [--quick]
"""

from __future__ import annotations

import json
from pathlib import Path

from semcache_server.bench.harness import bench_parser

RESULTS = Path(__file__).parent / "results"


def cell(point: dict | None) -> str:
    if point is None:
        return "not reached"
    return f"{point['hit_rate']:.1%} (t={point['threshold']:.2f})"


def main() -> None:
    bench_parser(__doc__).parse_args()  # --quick: the same (it only reads the recorded results)
    print(
        "| data set | mode | n | hit rate at <=1% false hits | hit rate at <=5% false hits | exact-match only "
        "| at t=0.90: hit / false hit |"
    )
    print("|---|---|---|---|---|---|---|")
    for path in sorted(RESULTS.glob("accuracy-*.json")):
        r = json.loads(path.read_text())
        best = r["best_at_false_hit_rate"]
        at90 = next((p for p in r["sweep"] if abs(p["threshold"] - 0.90) < 1e-6), None)
        at90_cell = f"{at90['hit_rate']:.1%} / {at90['false_hit_rate']:.2%}" if at90 else "-"
        print(
            f"| {r['dataset']} | {r['mode']} | {r['n']} | {cell(best['0.01'])} | {cell(best['0.05'])} | "
            f"{r['exact_baseline']['hit_rate']:.1%} | {at90_cell} |"
        )


if __name__ == "__main__":
    main()
