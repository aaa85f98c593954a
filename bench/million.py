"""A million entries on one node: load rate, memory, LMDB size, recovery, IVF speed and recall.

    python bench/million.py [--entries 1000000] [--json bench/results/million.json]

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

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from semcache.bench import datasets
from semcache.client import Client
from semcache.embedder import load_embedder
from semcache.vector_index import VectorIndex

PARTITION = {"namespace": "million", "model": "m"}
THRESHOLD = 0.90


def derived_vectors(count: int, data_dir: Path, seed: int = 0) -> np.ndarray:
    texts: list[str] = []
    for name in ("banking77", "clinc150", "hwu64"):
        texts += [q.text for q in datasets.load_replay(data_dir / name / "dev.replay.jsonl", 2000, seed)]
    base = load_embedder().embed(texts)
    rng = np.random.default_rng(seed)
    out = np.empty((count, base.shape[1]), dtype=np.float32)
    for start in range(0, count, 100_000):
        n = min(100_000, count - start)
        mix = base[rng.integers(0, len(base), n)] + 0.35 * base[rng.integers(0, len(base), n)]
        mix += 0.08 * rng.standard_normal(mix.shape).astype(np.float32)
        out[start:start + n] = mix / np.linalg.norm(mix, axis=1, keepdims=True)
    return out


def rss_anon_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise RuntimeError("no RssAnon")


def wait_serving(address: str, timeout: float = 600) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except Exception:
                pass
            time.sleep(0.1)
    raise RuntimeError("server did not become healthy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--datasets", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "datasets")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--loaders", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    result: dict[str, object] = {"entries": args.entries}

    vectors = derived_vectors(args.entries, args.datasets)
    probes_idx = np.random.default_rng(1).choice(args.entries, 2000, replace=False)
    noise = np.random.default_rng(2).standard_normal((2000, vectors.shape[1])).astype(np.float32)
    probes = vectors[probes_idx] + 0.02 * noise
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)

    # -- in-process: IVF search speed and agreement with exact search ---------------
    exact = VectorIndex(vectors.shape[1])
    exact.add(np.arange(args.entries), vectors)
    ivf = VectorIndex(vectors.shape[1], ivf_min_entries=1)  # the server's default nprobe
    ivf._ivf_trained_on = 0
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
        exact_ms.append((time.perf_counter() - t) * 1000)
    for probe, (best_id, best_similarity) in zip(probes, best_exact):
        t = time.perf_counter()
        got = ivf.search(probe, 8)
        ivf_ms.append((time.perf_counter() - t) * 1000)
        if best_similarity >= THRESHOLD:
            considered += 1
            agree += bool(got) and got[0][0] == best_id
    warm_ms = []  # the same probes again: the partition as it is while serving
    for probe in probes:
        t = time.perf_counter()
        ivf.search(probe, 8)
        warm_ms.append((time.perf_counter() - t) * 1000)
    result["search_ms"] = {
        "exact_p50": round(float(np.percentile(exact_ms, 50)), 3), "exact_p99": round(float(np.percentile(exact_ms, 99)), 3),
        "ivf_p50": round(float(np.percentile(ivf_ms, 50)), 3), "ivf_p99": round(float(np.percentile(ivf_ms, 99)), 3),
        "ivf_warm_p50": round(float(np.percentile(warm_ms, 50)), 3),
        "ivf_warm_p99": round(float(np.percentile(warm_ms, 99)), 3),
    }
    result["ivf_same_best_as_exact"] = {"probes_with_exact_best_at_or_above_threshold": considered,
                                        "share": round(agree / max(considered, 1), 4), "threshold": THRESHOLD}
    del exact, ivf
    print(json.dumps(result, indent=2), flush=True)

    # -- the server ----------------------------------------------------------------
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    work = Path(tempfile.mkdtemp(prefix="semcache-million-"))
    data_dir = str(work / "data")
    log_path = work / "server.log"
    command = [sys.executable, "-m", "semcache", "serve", "--listen", address, "--data-dir", data_dir,
               "--log-format", "json", "--max-message-bytes", str(64 << 20), "--max-versions-per-model", "0"]
    server = subprocess.Popen(command, stdout=log_path.open("ab"), stderr=subprocess.STDOUT)
    wait_serving(address)
    baseline_kib = rss_anon_kib(server.pid)
    response = "r" * 1000
    entry_ids = np.zeros(args.entries, dtype=np.int64)
    lookup_ms: list[float] = []
    done = threading.Event()

    def probe_lookups() -> None:
        with Client(address) as client:
            i = 0
            while not done.is_set():
                t = time.perf_counter()
                client.lookup(PARTITION, "", embedding=probes[i % 2000].tolist())
                lookup_ms.append((time.perf_counter() - t) * 1000)
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
        "lookup_ms_while_loading": {"p50": round(float(np.percentile(lookup_ms, 50)), 2),
                                    "p99": round(float(np.percentile(lookup_ms, 99)), 2), "count": len(lookup_ms)},
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
        for i in range(2000):
            t = time.perf_counter()
            found = client.lookup(PARTITION, "", embedding=probes[i].tolist())
            after.append((time.perf_counter() - t) * 1000)
            hits += found.hit
        result["lookup_ms_after_load"] = {"p50": round(float(np.percentile(after, 50)), 2),
                                          "p99": round(float(np.percentile(after, 99)), 2), "hit_share": hits / 2000}
    loaded_kib = rss_anon_kib(server.pid)
    result["memory"] = {
        "rss_anon_baseline_mib": round(baseline_kib / 1024, 1),
        "rss_anon_loaded_mib": round(loaded_kib / 1024, 1),
        "bytes_per_entry_outside_lmdb": round((loaded_kib - baseline_kib) * 1024 / args.entries),
        "of_which_vector_bytes": 4 * vectors.shape[1],
    }
    data_file = Path(data_dir) / "cache.lmdb" / "data.mdb"
    result["lmdb_bytes_per_entry"] = round(data_file.stat().st_blocks * 512 / args.entries)
    server.send_signal(signal.SIGTERM)
    server.wait(120)
    started = time.monotonic()
    server = subprocess.Popen(command, stdout=log_path.open("ab"), stderr=subprocess.STDOUT)
    wait_serving(address, timeout=900)
    restart_seconds = time.monotonic() - started
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    summary = [line for line in lines if line.get("msg", "").startswith("semcache serving")][-1]
    result["restart"] = {"seconds_to_serving": round(restart_seconds, 1), "recovery_seconds": summary["recovery_seconds"],
                         "entries_recovered": summary["entries"]}
    server.send_signal(signal.SIGTERM)
    server.wait(120)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
