"""The LFU policy at scale: what adds, hits and a restart's restore cost, and the
slowest single hit (a hit runs in every Lookup, under the lock Stores also need).

    python bench/lfu.py [--entries 1000000] [--json bench/results/lfu-1m.json] [--quick]
"""

from __future__ import annotations

import random
import time

from semcache_server.bench.harness import bench_parser, write_report
from semcache_server.eviction import Budget, EvictionPolicy


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    args = parser.parse_args()
    n = 5_000 if args.quick else args.entries
    result: dict[str, float] = {"entries": n}

    policy = EvictionPolicy(3600.0, Budget(), {})
    started = time.perf_counter()
    for entry_id in range(n):  # Stores: each new entry is the newest
        policy.add("ns", entry_id, 2000, 1000.0 + entry_id * 1e-6)
    result["add_seconds"] = time.perf_counter() - started

    # Hits on the 1,000 coldest entries (they sit at the top of the heap and move
    # furthest), n + 100 of them: more than the old design needed to rebuild its heap.
    slowest = 0.0
    started = time.perf_counter()
    for i in range(n + 100):
        t = time.perf_counter()
        policy.hit(i % 1000, 2000.0 + i * 1e-6)
        slowest = max(slowest, time.perf_counter() - t)
    result["hits_seconds"] = time.perf_counter() - started
    result["slowest_hit_ms"] = slowest * 1000

    started = time.perf_counter()
    victims = policy.lowest(1000)
    result["evict_1000_ms"] = (time.perf_counter() - started) * 1000
    assert len(victims) == 1000

    rng = random.Random(0)
    restored = EvictionPolicy(3600.0, Budget(), {})
    started = time.perf_counter()
    scores = [rng.random() * 10 for _ in range(n)]
    with restored.bulk():  # as recovery does
        for entry_id, score in enumerate(scores):  # persisted scores, in id order rather than score order
            restored.add("ns", entry_id, 2000, 1000.0, score=score, last_used_at=1000.0)
    result["restore_seconds"] = time.perf_counter() - started
    lowest = min(range(n), key=scores.__getitem__)  # a full scan of what was restored
    assert restored.lowest(1)[0].entry_id == lowest

    write_report({k: round(v, 3) for k, v in result.items()}, args.json)


if __name__ == "__main__":
    main()
