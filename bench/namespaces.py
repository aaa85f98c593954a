"""Many namespaces (a namespace per tenant): what a Store costs as their number grows.

    python bench/namespaces.py [--namespaces 20000] [--json FILE]

In-process (no gRPC, no model: 384-dim client vectors, fsync off), one partition per
namespace: loads one entry into each (StoreBatch, 500 per call), then sets the server
budget to exactly that many entries and times single Stores into random namespaces,
each of which must evict the least valuable entry of any namespace. Prints the load
rate, the Store p50/p99 at the budget, and process memory per partition.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from semcache.cache import SemanticCache, StoreItem
from semcache.eviction import Budget
from semcache.partition import PartitionKey
from semcache.settings import Settings


def rss_anon_bytes() -> int:
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--namespaces", type=int, default=20_000)
    parser.add_argument("--stores", type=int, default=2_000)
    parser.add_argument("--json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((1000, 384)).astype(np.float32)
    with tempfile.TemporaryDirectory() as data_dir:
        cache = SemanticCache(
            Settings(data_dir=data_dir, sync_writes=False, embedding_model="none", embedding_dimension=384), None
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
        cache._policy.server_budget = Budget(max_entries=args.namespaces)  # full: each Store evicts one
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
        "store_at_budget_p50_ms": round(float(np.percentile(seconds, 50)) * 1000, 3),
        "store_at_budget_p99_ms": round(float(np.percentile(seconds, 99)) * 1000, 3),
        "evictions": evictions,
        "memory_per_partition_bytes": round(memory_per_partition),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
