"""IVF list count and nprobe against search time and agreement with exact search.

    python bench/ivf_params.py [--entries 1000000]

Same derived-from-real vectors as bench/million.py; in-process, one thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from million import THRESHOLD, derived_vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--datasets", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "datasets")
    args = parser.parse_args()
    vectors = derived_vectors(args.entries, args.datasets)
    rng = np.random.default_rng(1)
    probes = vectors[rng.choice(args.entries, 1000, replace=False)] + 0.02 * rng.standard_normal((1000, vectors.shape[1])).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    exact_sim, exact_ids = faiss.knn(probes, vectors, 1, metric=faiss.METRIC_INNER_PRODUCT)
    considered = exact_sim[:, 0] >= THRESHOLD
    rows = []
    for nlist in (1000, 2000, 4000):
        quantizer = faiss.IndexFlatIP(vectors.shape[1])
        index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        sample = vectors[rng.choice(args.entries, min(args.entries, 32 * nlist), replace=False)]
        started = time.perf_counter()
        index.train(sample)
        index.add(vectors)
        build = time.perf_counter() - started
        for nprobe in (4, 8, 16, 32):
            index.nprobe = nprobe
            times, agree = [], 0
            for i, probe in enumerate(probes):
                t = time.perf_counter()
                _, found = index.search(probe.reshape(1, -1), 1)
                times.append((time.perf_counter() - t) * 1000)
                agree += bool(considered[i]) and found[0, 0] == exact_ids[i, 0]
            rows.append({"nlist": nlist, "nprobe": nprobe, "build_seconds": round(build, 1),
                         "p50_ms": round(float(np.percentile(times, 50)), 3), "p99_ms": round(float(np.percentile(times, 99)), 3),
                         "same_best": round(agree / max(int(considered.sum()), 1), 4)})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
