"""Where the time goes in one semantic Lookup, stage by stage, in-process.

    python bench/lookup_profile.py [--entries 10000]

Times, for the same queries: the exact-tier probe (normalize + one LMDB read),
the embedding, the vector search, reading the matched entry from LMDB, and the
whole `SemanticCache.lookup`; gRPC's share is a health Check round trip
(measured by bench/perf.py as health_p50_ms).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

from semcache.cache import SemanticCache
from semcache.embedder import load_embedder
from semcache.normalize import normalize_query
from semcache.partition import PartitionKey
from semcache.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    embedder = load_embedder()
    with tempfile.TemporaryDirectory() as data_dir:
        cache = SemanticCache(Settings(data_dir=data_dir, sync_writes=False), embedder)
        key = PartitionKey("profile", "m", "")
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((args.entries, embedder.dimension)).astype(np.float32)
        for start in range(0, args.entries, 1000):
            from semcache.cache import StoreItem

            cache.store_batch([StoreItem(key, f"stored question {i}", b"r" * 1000, embedding=vectors[i])
                               for i in range(start, min(start + 1000, args.entries))])
        queries = [f"how would I go about changing the setting number {i} of my account" for i in range(args.queries)]
        partition = cache._by_key[key]
        stages: dict[str, list[float]] = {k: [] for k in ("exact_tier", "embed", "search", "read_entry", "whole_lookup")}
        for query in queries[:20]:
            cache.lookup(key, query)
        for query in queries:
            t = time.perf_counter()
            with cache._store.read() as txn:
                cache._store.find_exact(txn, partition.id, normalize_query(query))
            stages["exact_tier"].append(time.perf_counter() - t)
            t = time.perf_counter()
            vector = embedder.embed([query])[0]
            stages["embed"].append(time.perf_counter() - t)
            t = time.perf_counter()
            best = partition.index.search(vector, 8)
            stages["search"].append(time.perf_counter() - t)
            t = time.perf_counter()
            with cache._store.read() as txn:
                cache._store.get_entry(txn, best[0][0])
            stages["read_entry"].append(time.perf_counter() - t)
            t = time.perf_counter()
            cache.lookup(key, query)
            stages["whole_lookup"].append(time.perf_counter() - t)
        cache.close()
    result = {name: round(float(np.percentile(values, 50)) * 1000, 4) for name, values in stages.items()}
    result["entries"] = args.entries
    print(json.dumps({"p50_ms": result}, indent=2))


if __name__ == "__main__":
    main()
