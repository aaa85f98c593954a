"""Many namespaces (a namespace per tenant): what a Store costs as their number grows.

    python bench/namespaces.py [--namespaces 20000] [--json FILE] [--quick]

In-process (no gRPC, no model: 384-dim client vectors, fsync off), one partition per
namespace, under a server budget of exactly one entry per namespace: loads one entry
into each (StoreBatch, 500 per call), then times single Stores into random namespaces,
each of which must evict the least valuable entry of any namespace. Prints the load
rate, the Store p50/p99 at the budget, and process memory per partition.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from semcache_server.bench.harness import bench_parser, percentile_ms, rss_anon_bytes, write_report
from semcache_server.cache import SemanticCache, StoreItem
from semcache_server.partition import PartitionKey
from semcache_server.settings import Settings


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--namespaces", type=int, default=20_000)
    parser.add_argument("--stores", type=int, default=2_000)
    args = parser.parse_args()
    if args.quick:
        args.namespaces, args.stores = 600, 50
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((1000, 384)).astype(np.float32)
    with tempfile.TemporaryDirectory() as data_dir:
        cache = SemanticCache(
            Settings(
                data_dir=data_dir, sync_writes=False, embedding_model="none", embedding_dimension=384,
                max_entries=args.namespaces,  # full once loaded: each later Store evicts one
            ),
            None,
        )
        memory_before = rss_anon_bytes()
        started = time.perf_counter()
        for start in range(0, args.namespaces, 500):
            cache.store_batch([
                StoreItem(PartitionKey(f"tenant-{i}", "m", ""), f"question {i}", b"r" * 1000, embedding=vectors[i % 1000])
                for i in range(start, min(args.namespaces, start + 500))
            ])
        load_seconds = time.perf_counter() - started
        memory_per_partition = (rss_anon_bytes() - memory_before) / args.namespaces
        assert cache.stats().totals.evictions == 0
        seconds = []
        for i in range(args.stores):
            key = PartitionKey(f"tenant-{int(rng.integers(args.namespaces))}", "m", "")
            started = time.perf_counter()
            cache.store(key, f"new question {i}", b"r" * 1000, embedding=vectors[i % 1000])
            seconds.append(time.perf_counter() - started)
        evictions = cache.stats().totals.evictions
        cache.close()
    result = {
        "namespaces": args.namespaces,
        "load_partitions_per_second": round(args.namespaces / load_seconds),
        "store_at_budget_p50_ms": round(percentile_ms(seconds, 50), 3),
        "store_at_budget_p99_ms": round(percentile_ms(seconds, 99), 3),
        "evictions": evictions,
        "memory_per_partition_bytes": round(memory_per_partition),
    }
    write_report(result, args.json)


if __name__ == "__main__":
    main()
