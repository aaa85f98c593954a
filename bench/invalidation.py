"""How long invalidating a large partition takes, and what it does to lookups elsewhere.

    python bench/invalidation.py --entries 200000 [--json bench/results/invalidation.json] [--quick]

Loads N entries (random unit vectors, 1 KB responses, sync_writes off for the load)
into one partition and 100 into another, then invalidates the big one while a
second thread looks up in the small one, and prints the invalidation time and the
lookup latency percentiles during it.
"""

from __future__ import annotations

import tempfile
import threading
import time

import numpy as np

from semcache_server.bench.harness import bench_parser, percentile_ms, write_report
from semcache_server.cache import SemanticCache
from semcache_server.partition import PartitionKey
from semcache_server.settings import Settings

DIMENSION = 384


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--entries", type=int, default=200_000)
    args = parser.parse_args()
    if args.quick:
        args.entries = 500

    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(
            data_dir=data_dir, embedding_model="none", embedding_dimension=DIMENSION,
            sync_writes=False, max_versions_per_model=0,
        )
        cache = SemanticCache(settings, None)
        rng = np.random.default_rng(0)
        big, small = PartitionKey("big", "m", "v1"), PartitionKey("small", "m", "v1")
        response = b"r" * 1024
        started = time.perf_counter()
        for i in range(args.entries):
            cache.store(big, f"q{i}", response, embedding=rng.standard_normal(DIMENSION))
        load_seconds = time.perf_counter() - started
        probes = [rng.standard_normal(DIMENSION) for _ in range(100)]
        for i, vector in enumerate(probes):
            cache.store(small, f"s{i}", response, embedding=vector)

        latencies: list[float] = []
        done = threading.Event()

        def lookups() -> None:
            i = 0
            while not done.is_set():
                t = time.perf_counter()
                assert cache.lookup(small, "", embedding=probes[i % 100]).hit
                latencies.append(time.perf_counter() - t)
                i += 1

        baseline: list[float] = []
        for i in range(2000):
            t = time.perf_counter()
            cache.lookup(small, "", embedding=probes[i % 100])
            baseline.append(time.perf_counter() - t)
        worker = threading.Thread(target=lookups)
        worker.start()
        started = time.perf_counter()
        removed = cache.invalidate(big)
        invalidate_seconds = time.perf_counter() - started
        done.set()
        worker.join()
        cache.close()

    result = {
        "entries": args.entries,
        "removed": removed,
        "load_seconds": round(load_seconds, 2),
        "load_stores_per_second": round(args.entries / load_seconds),
        "invalidate_seconds": round(invalidate_seconds, 3),
        "invalidated_entries_per_second": round(removed / invalidate_seconds),
        "other_partition_lookup_ms_idle": {q: round(percentile_ms(baseline, q), 3) for q in (50, 99)},
        "other_partition_lookup_ms_during": {
            **{q: round(percentile_ms(latencies, q), 3) for q in (50, 99)},
            "max": round(max(latencies, default=0.0) * 1000, 3), "count": len(latencies),
        },
    }
    write_report(result, args.json)


if __name__ == "__main__":
    main()
