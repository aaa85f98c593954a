"""Stores into a Redis Cluster at its maxmemory: with short responses most of an entry is
its vector and bookkeeping, which Redis cannot evict, so they must be reclaimed as Redis
evicts records (semcache_server/redis_backend/reclaim.py). Counts refused Stores, with
the reclaimer and (--no-reclaim) without it, and what Redis holds at the end.

    python bench/redis_eviction.py [--stores 30000] [--maxmemory-mb 12] [--no-reclaim] [--json FILE]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from semcache_server.bench.harness import bench_parser, write_report
from semcache_server.cache import SemanticCache, StoreItem
from semcache_server.errors import SemcacheError
from semcache_server.partition import PartitionKey
from semcache_server.redis_backend import reclaim
from semcache_server.redis_backend.local_cluster import LocalCluster
from semcache_server.settings import Settings


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--stores", type=int, default=30000)
    parser.add_argument("--maxmemory-mb", type=int, default=12)
    parser.add_argument("--response-bytes", type=int, default=100)
    parser.add_argument("--no-reclaim", action="store_true", help="leave leftovers to the sweep (every 30 s)")
    args = parser.parse_args()
    if args.quick:
        args.stores = 3000
    if args.no_reclaim:
        reclaim.Reclaimer.start = lambda self: None  # type: ignore[method-assign]  # the bench's A/B switch
        reclaim.Reclaimer.stop = lambda self: None  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(
        Path(tmp), replicas=0, extra=("--maxmemory", f"{args.maxmemory_mb}mb"),
    ) as cluster:
        settings = Settings(backend=cluster.url, embedding_model="none", embedding_dimension=384)
        cache = SemanticCache(settings, None)
        cache.start_maintenance()
        key = PartitionKey("eviction", "m", "v1")
        rng = np.random.default_rng(0)
        refused, started = 0, time.monotonic()
        for start in range(0, args.stores, 100):
            vectors = rng.standard_normal((100, 384)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            results = cache.store_batch([
                StoreItem(key, f"question {start + i}", b"r" * args.response_bytes, embedding=v)
                for i, v in enumerate(vectors)
            ])
            refused += sum(isinstance(r, SemcacheError) for r in results)
        seconds = time.monotonic() - started
        time.sleep(0.5)
        stats = cache.stats()
        used = sum(cluster.used_memory(port) for port in cluster.primaries())
        cache.close()
    write_report({
        "reclaim": not args.no_reclaim, "stores": args.stores, "refused": refused, "seconds": round(seconds, 1),
        "maxmemory_mb_per_primary": args.maxmemory_mb, "response_bytes": args.response_bytes,
        "entries_at_end": stats.entries, "evictions_counted": stats.totals.evictions, "redis_used_mb": round(used / 2**20, 1),
    }, args.json)


if __name__ == "__main__":
    main()
