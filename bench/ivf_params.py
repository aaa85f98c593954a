"""IVF list count and nprobe against search time and agreement with exact search.

    python bench/ivf_params.py [--entries 1000000] [--json FILE] [--quick]

Same derived-from-real vectors as bench/million.py; in-process, one thread.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import faiss
import numpy as np

from semcache_server.bench.harness import bench_parser, default_datasets_dir, derived_vectors, percentile_ms, write_report

# Probes whose exact best match is at or above this count for agreement (as bench/million.py).
THRESHOLD = 0.90


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--datasets", type=Path, default=default_datasets_dir())
    args = parser.parse_args()
    nlists, nprobes, probe_count = ((1000, 2000, 4000), (4, 8, 16, 32), 1000)
    if args.quick:
        args.entries, nlists, nprobes, probe_count = 4000, (40,), (4, 8), 100
    vectors = derived_vectors(args.entries, args.datasets, queries_per_set=100 if args.quick else 2000)
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((probe_count, vectors.shape[1])).astype(np.float32)
    probes = vectors[rng.choice(args.entries, probe_count, replace=False)] + 0.02 * noise
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    exact_sim, exact_ids = faiss.knn(probes, vectors, 1, metric=faiss.METRIC_INNER_PRODUCT)
    considered = exact_sim[:, 0] >= THRESHOLD
    rows = []
    for nlist in nlists:
        quantizer = faiss.IndexFlatIP(vectors.shape[1])
        index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        sample = vectors[rng.choice(args.entries, min(args.entries, 32 * nlist), replace=False)]
        started = time.perf_counter()
        index.train(sample)
        index.add(vectors)
        build = time.perf_counter() - started
        for nprobe in nprobes:
            index.nprobe = nprobe
            times, agree = [], 0
            for i, probe in enumerate(probes):
                t = time.perf_counter()
                _, found = index.search(probe.reshape(1, -1), 1)
                times.append(time.perf_counter() - t)
                agree += bool(considered[i]) and found[0, 0] == exact_ids[i, 0]
            rows.append({"nlist": nlist, "nprobe": nprobe, "build_seconds": round(build, 1),
                         "p50_ms": round(percentile_ms(times, 50), 3), "p99_ms": round(percentile_ms(times, 99), 3),
                         "same_best": round(agree / max(int(considered.sum()), 1), 4)})
            print(json.dumps(rows[-1]), flush=True)
    write_report({"entries": args.entries, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
