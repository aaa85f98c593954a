"""A million entries on one node: load rate, memory, LMDB size, recovery, IVF speed and recall.

    python bench/million.py [--entries 1000000] [--json bench/results/million.json] [--quick]

Vectors are derived from real embeddings (the model's vectors of dev-set queries,
each mixed with another and a little noise), so they cluster like real traffic.
Starts `semcache serve` (fsync on) in a child process, loads the entries through
StoreBatch with ~1 KB responses while a probe thread measures Lookup latency, then
reports process memory per entry outside the LMDB map (RssAnon, after the IVF
swap), LMDB bytes per entry, and the restart time. Separately, in this process, it
times IVF search on the same vectors (a first pass right after the 1.5 GB exact scan,
cache-cold, and a second, warm pass over the same probes) and checks its best match
against exact search for probes whose exact best match is at or above the threshold.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from semcache_server.bench.harness import (
    bench_parser,
    default_datasets_dir,
    derived_vectors,
    free_port,
    percentile_ms,
    rss_anon_bytes,
    start_server,
    stop_server,
    write_report,
)
from semcache_server.client import Client
from semcache_server.vector_index import VectorIndex

PARTITION = {"namespace": "million", "model": "m"}
THRESHOLD = 0.90


def _ms(samples_seconds: list[float]) -> dict[str, float]:
    return {"p50": round(percentile_ms(samples_seconds, 50), 3), "p99": round(percentile_ms(samples_seconds, 99), 3)}


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--datasets", type=Path, default=default_datasets_dir())
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--loaders", type=int, default=3)
    args = parser.parse_args()
    probe_count = 2000
    if args.quick:
        args.entries, probe_count = 3000, 200
    result: dict[str, object] = {"entries": args.entries}

    vectors = derived_vectors(args.entries, args.datasets, queries_per_set=100 if args.quick else 2000)
    probes_idx = np.random.default_rng(1).choice(args.entries, probe_count, replace=False)
    noise = np.random.default_rng(2).standard_normal((probe_count, vectors.shape[1])).astype(np.float32)
    probes = vectors[probes_idx] + 0.02 * noise
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)

    # -- in-process: IVF search speed and agreement with exact search ---------------
    exact = VectorIndex(vectors.shape[1])
    exact.add(np.arange(args.entries), vectors)
    ivf = VectorIndex(vectors.shape[1], ivf_min_entries=1)  # the server's default nprobe
    started = time.perf_counter()
    ivf.add(np.arange(args.entries), vectors)
    ivf.wait_for_build()
    result["ivf_build_seconds"] = round(time.perf_counter() - started, 1)
    # Each index in a loop of its own: an exact scan of 1.5 GB between two IVF searches
    # would leave every IVF search cache-cold, which a serving partition is not.
    exact_ms, ivf_ms, agree, considered = [], [], 0, 0
    best_exact = []
    for probe in probes:
        t = time.perf_counter()
        best_exact.append(exact.search(probe, 1)[0])
        exact_ms.append(time.perf_counter() - t)
    for probe, (best_id, best_similarity) in zip(probes, best_exact, strict=True):
        t = time.perf_counter()
        got = ivf.search(probe, 8)
        ivf_ms.append(time.perf_counter() - t)
        if best_similarity >= THRESHOLD:
            considered += 1
            agree += bool(got) and got[0][0] == best_id
    warm_ms = []  # the same probes again: the partition as it is while serving
    for probe in probes:
        t = time.perf_counter()
        ivf.search(probe, 8)
        warm_ms.append(time.perf_counter() - t)
    result["search_ms"] = {
        **{f"exact_{k}": v for k, v in _ms(exact_ms).items()},
        **{f"ivf_{k}": v for k, v in _ms(ivf_ms).items()},
        **{f"ivf_warm_{k}": v for k, v in _ms(warm_ms).items()},
    }
    result["ivf_same_best_as_exact"] = {"probes_with_exact_best_at_or_above_threshold": considered,
                                        "share": round(agree / max(considered, 1), 4), "threshold": THRESHOLD}
    del exact, ivf
    print(json.dumps(result, indent=2), flush=True)

    # -- the server ----------------------------------------------------------------
    address = f"127.0.0.1:{free_port()}"
    work = Path(tempfile.mkdtemp(prefix="semcache-million-"))
    data_dir = str(work / "data")
    log_path = work / "server.log"
    flags = ("--log-format", "json", "--max-message-bytes", str(64 << 20), "--max-versions-per-model", "0")
    server = start_server(address, data_dir, *flags, log_path=log_path, serving_within_seconds=600)
    baseline_bytes = rss_anon_bytes(server.pid)
    response = "r" * 1000
    entry_ids = np.zeros(args.entries, dtype=np.int64)
    lookup_ms: list[float] = []
    done = threading.Event()

    def probe_lookups() -> None:
        with Client(address) as client:
            i = 0
            while not done.is_set():
                t = time.perf_counter()
                client.lookup(PARTITION, "", embedding=probes[i % probe_count].tolist())
                lookup_ms.append(time.perf_counter() - t)
                i += 1
                time.sleep(0.01)

    next_start = [0]
    lock = threading.Lock()

    def loader() -> None:
        with Client(address, timeout_seconds=300) as client:
            while True:
                with lock:
                    start = next_start[0]
                    next_start[0] += args.batch
                if start >= args.entries:
                    return
                stop = min(start + args.batch, args.entries)
                items = [{"partition": PARTITION, "query": f"warm query {i}", "response": response,
                          "embedding": vectors[i].tolist()} for i in range(start, stop)]
                results = client.store_batch(items).results
                entry_ids[start:stop] = [int(r.stored.entry_id) for r in results]

    prober = threading.Thread(target=probe_lookups, daemon=True)
    prober.start()
    started = time.perf_counter()
    loaders = [threading.Thread(target=loader) for _ in range(args.loaders)]
    for t in loaders:
        t.start()
    for t in loaders:
        t.join()
    load_seconds = time.perf_counter() - started
    done.set()
    prober.join()
    result["load"] = {
        "seconds": round(load_seconds, 1), "entries_per_second": round(args.entries / load_seconds),
        "lookup_ms_while_loading": {**_ms(lookup_ms), "count": len(lookup_ms)},
    }
    with Client(address) as client:
        assert client.stats().entries == args.entries, client.stats().entries
        # Wait for the server's IVF swap, then look up.
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            t = time.perf_counter()
            client.lookup(PARTITION, "", embedding=probes[0].tolist())
            if (time.perf_counter() - t) * 1000 < 5:
                break
            time.sleep(2)
        after: list[float] = []
        hits = 0
        for i in range(probe_count):
            t = time.perf_counter()
            found = client.lookup(PARTITION, "", embedding=probes[i].tolist())
            after.append(time.perf_counter() - t)
            hits += found.hit
        result["lookup_ms_after_load"] = {**_ms(after), "hit_share": hits / probe_count}
    loaded_bytes = rss_anon_bytes(server.pid)
    result["memory"] = {
        "rss_anon_baseline_mib": round(baseline_bytes / (1 << 20), 1),
        "rss_anon_loaded_mib": round(loaded_bytes / (1 << 20), 1),
        "bytes_per_entry_outside_lmdb": round((loaded_bytes - baseline_bytes) / args.entries),
        "of_which_vector_bytes": 4 * vectors.shape[1],
    }
    data_file = Path(data_dir) / "cache.lmdb" / "data.mdb"
    result["lmdb_bytes_per_entry"] = round(data_file.stat().st_blocks * 512 / args.entries)
    stop_server(server, 120)
    started = time.monotonic()
    server = start_server(address, data_dir, *flags, log_path=log_path, serving_within_seconds=900)
    restart_seconds = time.monotonic() - started
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    summary = [line for line in lines if line.get("msg", "").startswith("semcache serving")][-1]
    result["restart"] = {"seconds_to_serving": round(restart_seconds, 1), "recovery_seconds": summary["recovery_seconds"],
                         "entries_recovered": summary["entries"]}
    stop_server(server, 120)
    write_report(result, args.json)


if __name__ == "__main__":
    main()
