"""Why the soak's throughput falls as entries grow: Lookup cost against the number of
stored near duplicates that the guard refuses.

    python bench/near_duplicates.py [--entries 2000,6000,10000] [--lookups 300] [--json FILE] [--quick]

The soak's texts are 500 questions, each stored again and again with another number
("... (case 17) #123"), so a new Lookup's nearest candidates are that question's stored
variants: those above the threshold are refused by the guard (the numbers differ) and
the Lookup goes on to the next, searching again with a larger k when it runs out; their
count grows with the entries (entries / 500). Each Lookup ends a miss
("below_threshold" once past them). A real SemanticCache with the embedded model,
in-process: the Lookup path alone, without gRPC. `guard_refused`: Lookups whose guard
refused at least one candidate.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time

from semcache_server.bench.harness import texts
from semcache_server.cache import SemanticCache
from semcache_server.embedder import load_embedder
from semcache_server.partition import PartitionKey
from semcache_server.settings import Settings

KEY = PartitionKey("soak", "m", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", default="2000,6000,10000")
    parser.add_argument("--lookups", type=int, default=300)
    parser.add_argument("--json", default="")
    parser.add_argument("--quick", action="store_true", help="500 and 1,000 entries, 50 Lookups")
    args = parser.parse_args()
    sizes = [500, 1000] if args.quick else [int(n) for n in args.entries.split(",")]
    lookups = 50 if args.quick else args.lookups
    embedder = load_embedder()
    pool = texts(20_000)
    stored = [f"{pool[n % len(pool)]} #{n}" for n in range(max(sizes))]
    asked = [f"{pool[n % len(pool)]} ?{n}" for n in range(max(sizes), max(sizes) + lookups)]
    vectors = dict(zip(stored + asked, embedder.embed(stored + asked, None), strict=True))
    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        cache = SemanticCache(Settings(data_dir=data_dir, sync_writes=False), embedder)
        done = 0
        for size in sizes:
            for text in stored[done:size]:
                cache.store(KEY, text, b"answer", embedding=vectors[text])
            done = size
            decided: collections.Counter[str] = collections.Counter()
            refused = 0
            started = time.perf_counter()
            for text in asked:
                found = cache.lookup(KEY, text, embedding=vectors[text])
                decided[found.decided_by] += 1
                refused += bool(found.guard_reason)
            seconds = time.perf_counter() - started
            rows.append({
                "entries": size, "lookups": lookups, "ms_per_lookup": round(1000 * seconds / lookups, 2),
                "decided_by": dict(decided), "guard_refused": refused,
            })
            print(json.dumps(rows[-1]))
        cache.close()
    report = {"rows": rows}
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
