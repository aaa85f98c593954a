"""Memory of the Feedback lookup log (semcache_server/feedback.py) per logged Lookup:
fills a real SemanticCache (no model, client vectors) with hits and misses of
soak-like questions and measures the heap the log holds (tracemalloc).

    python bench/lookup_log_memory.py [--lookups 100000] [--json FILE] [--quick]

Sizes `feedback_log_entries`: the soak's RSS rose by ~50 MB while the log filled.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import tracemalloc

import numpy as np

from semcache_server.bench.harness import texts
from semcache_server.cache import SemanticCache
from semcache_server.partition import PartitionKey
from semcache_server.settings import Settings

KEY = PartitionKey("soak", "m", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=100_000)
    parser.add_argument("--json", default="")
    parser.add_argument("--quick", action="store_true", help="1,000 Lookups (checks the script runs)")
    args = parser.parse_args()
    if args.quick:
        args.lookups = 1000
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(data_dir=data_dir, embedding_model="none", embedding_dimension=8, sync_writes=False,
                            feedback_log_entries=args.lookups)
        cache = SemanticCache(settings, None)
        rng = np.random.default_rng(0)
        pool = texts(2000)
        for text in pool[:500]:
            cache.store(KEY, text, b"answer", embedding=_unit(rng))
        questions = [f"{pool[i % len(pool)]} #{i}" for i in range(args.lookups)]
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for i, question in enumerate(questions):
            if i % 3 == 0:  # a third are stored questions (hits), the rest new (misses)
                cache.lookup(KEY, pool[i % 500])
            else:
                cache.lookup(KEY, question, embedding=_unit(rng))
        after = tracemalloc.take_snapshot()
        held = sum(s.size_diff for s in after.compare_to(before, "filename"))
        logged = len(cache.verdicts.log_of_lookups._lookups)
        cache.close()
    report = {"lookups": args.lookups, "logged": logged, "heap_growth_bytes": held,
              "bytes_per_logged_lookup": round(held / max(1, logged))}
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(8).astype(np.float32)
    return v / np.linalg.norm(v)


if __name__ == "__main__":
    main()
