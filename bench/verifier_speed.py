"""The verifier's cost per Lookup: scoring 1 and 4 gray-band candidates, int8 on
onnxruntime, on 1 and 2 threads (verifier_threads), p50 and p90 over 200 calls.

"batching": what scoring concurrent Lookups' pairs in one model call would buy, as the
embedder's batcher does for texts: pairs/s when 320 pairs of replay queries go N at a
time (N = 1 ... 32), on one thread, the server's default; and the same for one pair
repeated (one length, so no padding).

    python bench/verifier_speed.py --verifier DIR [--json FILE] [--quick]

--quick trains a tiny model first (its speed is the same as a real one's: same graph).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from semcache_server.bench.harness import bench_parser, default_datasets_dir, write_report
from semcache_server.verifier.model import OnnxVerifier

QUERY = "how long does it take for my new card to arrive"
CANDIDATES = [
    "when will my card be delivered", "my card has not arrived yet", "how do I activate my card",
    "can I track the card you sent me",
]


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--verifier", type=Path)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    if args.quick:
        from semcache_server.verifier.data import load_pair_files
        from semcache_server.verifier.training import TrainingSettings, train

        args.calls = 20
        if args.verifier is None:
            out = Path(tempfile.mkdtemp(prefix="verifier-speed-")) / "verifier"
            pairs = load_pair_files([default_datasets_dir() / "banking77" / "dev.pairs.jsonl"], limit_per_file=16)
            train(pairs, out, TrainingSettings(epochs=1, batch_size=16, max_length=32), progress=False)
            args.verifier = out
    if args.verifier is None:
        parser.error("--verifier DIR is required")
    rows = []
    for threads in (1, 2):
        verifier = OnnxVerifier(args.verifier, threads=threads)
        for n in (1, 4):
            for _ in range(10):
                verifier.score(QUERY, CANDIDATES[:n])
            seconds = []
            for _ in range(args.calls):
                started = time.perf_counter()
                verifier.score(QUERY, CANDIDATES[:n])
                seconds.append(time.perf_counter() - started)
            seconds.sort()
            rows.append({
                "threads": threads, "candidates": n,
                "p50_ms": round(statistics.median(seconds) * 1000, 2),
                "p90_ms": round(seconds[int(len(seconds) * 0.9)] * 1000, 2),
            })
    write_report({"verifier": str(args.verifier), "rows": rows, "batching": _batching(args)}, args.json)


def _batching(args) -> list[dict]:  # type: ignore[no-untyped-def]
    from semcache_server.bench import datasets

    texts = [q.text for q in datasets.load_replay(default_datasets_dir() / "banking77" / "dev.replay.jsonl", 400, 0)]
    pairs = list(zip(texts[::2], texts[1::2], strict=False))[: 32 if args.quick else 320]
    verifier = OnnxVerifier(args.verifier, threads=1)
    verifier.score_pairs(pairs[:8])
    same = [(QUERY, CANDIDATES[0])] * len(pairs)  # one length: no padding
    rows = []
    for n in (1, 2, 4, 8, 16, 32):
        row: dict = {"pairs_per_call": n}
        for name, scored in (("pairs_per_second", pairs), ("same_pair_pairs_per_second", same)):
            started = time.perf_counter()
            for i in range(0, len(scored), n):
                verifier.score_pairs(scored[i:i + n])
            row[name] = round(len(scored) / (time.perf_counter() - started), 1)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
