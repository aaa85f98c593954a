"""Where the time goes in one semantic Lookup, stage by stage, in-process.

    python bench/lookup_profile.py [--entries 10000] [--json FILE] [--quick]

Times, for the same queries: the exact-tier probe (normalize + one LMDB read),
the embedding, the vector search, reading the matched entry from LMDB, and the
whole `SemanticCache.lookup`; gRPC's share is a health Check round trip
(measured by bench/perf.py as health_p50_ms).
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from semcache_server.bench.harness import bench_parser, p50_ms, write_report
from semcache_server.cache import SemanticCache, StoreItem
from semcache_server.embedder import load_embedder
from semcache_server.local_storage import LocalStorage
from semcache_server.normalize import normalize_query
from semcache_server.partition import PartitionKey
from semcache_server.settings import Settings


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    if args.quick:
        args.entries, args.queries = 300, 20
    embedder = load_embedder()
    with tempfile.TemporaryDirectory() as data_dir:
        cache = SemanticCache(Settings(data_dir=data_dir, sync_writes=False), embedder)
        key = PartitionKey("profile", "m", "")
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((args.entries, embedder.dimension)).astype(np.float32)
        for start in range(0, args.entries, 1000):
            cache.store_batch([StoreItem(key, f"stored question {i}", b"r" * 1000, embedding=vectors[i])
                               for i in range(start, min(start + 1000, args.entries))])
        queries = [f"how would I go about changing the setting number {i} of my account" for i in range(args.queries)]
        storage = cache.storage
        assert isinstance(storage, LocalStorage)
        partition = storage.partition(key)
        assert partition is not None
        stages: dict[str, list[float]] = {k: [] for k in ("exact_tier", "embed", "search", "read_entry", "whole_lookup")}
        for query in queries[:20]:
            cache.lookup(key, query)
        for query in queries:
            t = time.perf_counter()
            storage.exact_candidate(partition, normalize_query(query), time.time())
            stages["exact_tier"].append(time.perf_counter() - t)
            t = time.perf_counter()
            vector = embedder.embed([query])[0]
            stages["embed"].append(time.perf_counter() - t)
            t = time.perf_counter()
            best = partition.index.search(vector, 8)
            stages["search"].append(time.perf_counter() - t)
            t = time.perf_counter()
            with storage.store.read() as txn:
                storage.store.get_entry(txn, best[0][0])
            stages["read_entry"].append(time.perf_counter() - t)
            t = time.perf_counter()
            cache.lookup(key, query)
            stages["whole_lookup"].append(time.perf_counter() - t)
        cache.close()
    result: dict[str, float] = {name: round(p50_ms(values), 4) for name, values in stages.items()}
    result["entries"] = args.entries
    write_report({"p50_ms": result}, args.json)


if __name__ == "__main__":
    main()
