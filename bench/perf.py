"""Speed ratios of issue targets 1-4, measured in one run on one machine.

    python bench/perf.py [--json bench/results/perf.json] [--seconds 8] [--quick]
    python bench/perf.py --stores-only --sync-delay-ms 5 [--json ...]

Starts `semcache serve` (ONNX backend, fsync on, metrics on) in a child process on a
free loopback port and measures:
  single client, in interleaved blocks (25 calls of each kind, 12 rounds, so drift
  of this noisy machine hits every figure alike):
    embed_p50_ms              the bare in-process embedding of one short query (same model)
    semantic_lookup_p50_ms    Lookups that need an embedding (distinct texts)
    exact_hit_p50_ms          Lookups served by the exact tier
    health_p50_ms             the gRPC health Check (a no-op)
    server_embed_mean_ms      the same lookups' embedding inside the server (its metrics)
  embedder_batch_qps          the embedder's own batched throughput: the best of
                              32-text calls on all cores and one 640-text call (one-core
                              runs side by side), before, between and after the 32-client runs
  semantic_lookups_32_qps     32 clients, semantic Lookups per second (two runs, each
                              between two of the embedder's measurements)
  batcher_32_threads_in_process_qps   32 threads of this process through the server's
                              batcher, no gRPC (what batching alone achieves)
  disk_sync_p50_ms            this disk: one 4 KB write + fdatasync, as a commit makes
  one_commit_per_store_per_s  in-process (a child process, on the same filesystem and
                              under the same --sync-delay-ms), fsync on: Stores with
                              client vectors, each in its own commit
  store_1_client_per_s        one gRPC client, Stores with client vectors
  store_32_clients_per_s      32 gRPC clients, Stores with client vectors (group commit)
  stores_per_commit_32        semcache_store_commits_total over those Stores
  *_client_cpu_ms, *_server_cpu_ms   CPU time (user + system) per call of this process
                              (the load generator) and of the server, during the 32-client runs
  cores_for_5x_stores_*       what 5x the one-commit rate would take of the 2 cores: that many
                              Stores/s at the measured CPU per Store, for the load generator
                              and for the server
and prints the ratios the targets name.

--sync-delay-ms N makes every fsync/fdatasync of the server and of the one-commit
baseline wait N ms first (bench/slow_sync.c, LD_PRELOAD; LMDB makes one fdatasync per
commit), to measure group commit on a disk whose syncs cost what a network volume's
or a consumer SSD's do. The data still reaches this disk as without it. --stores-only
skips the embedding and lookup figures, which do not depend on the disk.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from semcache_server.batcher import BatchingEmbedder
from semcache_server.bench.harness import (
    bench_parser,
    concurrent_rate,
    embedder_batch_qps,
    free_port,
    interleaved,
    metric,
    p50_ms,
    serve_in_child,
    texts,
    write_report,
)
from semcache_server.cache import SemanticCache
from semcache_server.client import Client
from semcache_server.embedder import load_embedder
from semcache_server.partition import PartitionKey
from semcache_server.settings import Settings


def batcher_rate(embedder, queries: list[str], threads: int, seconds: float) -> float:
    """Texts/s through the server's BatchingEmbedder from `threads` threads in this
    process: the batching alone, without gRPC."""
    batcher = BatchingEmbedder(embedder)
    counts = [0] * threads
    stop = [0.0]

    def run(n: int) -> None:
        i = 0
        while time.perf_counter() < stop[0]:
            batcher.embed([queries[(n * 5000 + i) % len(queries)]])
            i += 1
        counts[n] = i

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    started = time.perf_counter()
    stop[0] = started + seconds
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def one_commit_per_store_rate(data_dir: str, vectors: list[list[float]], seconds: float) -> float:
    """Stores/s in-process with fsync on when every Store has a commit of its own."""
    cache = SemanticCache(
        Settings(data_dir=data_dir, embedding_model="none", embedding_dimension=len(vectors[0])), None
    )
    key = PartitionKey("perf-commit", "m", "")
    try:
        count = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            cache.store(key, f"c {count}", b"x" * 1000, embedding=vectors[count % len(vectors)])
            count += 1
        return count / (time.perf_counter() - started)
    finally:
        cache.close()


def disk_sync_p50_ms(directory: str, count: int = 200) -> float:
    """p50 of one 4 KB write followed by fdatasync in `directory`: what a commit's sync costs."""
    path = Path(directory) / "sync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    samples = []
    try:
        for i in range(count):
            started = time.perf_counter()
            os.pwrite(fd, os.urandom(4096), 4096 * (i % 64))
            os.fdatasync(fd)
            samples.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return p50_ms(samples)


def commit_baseline(data_dir: str, seconds: float, env: dict[str, str]) -> dict[str, float]:
    """disk_sync_p50_ms and one_commit_per_store_per_s, measured in a child process that
    sees the same disk as the server (including a --sync-delay-ms shim)."""
    out = subprocess.run(
        [sys.executable, __file__, "--commit-baseline", data_dir, "--seconds", str(seconds)],
        env=env, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.splitlines()[-1])


def store_vectors() -> list[list[float]]:
    """The client vectors of every Store measurement, the same in this process and the child."""
    return np.random.default_rng(0).standard_normal((4096, 384)).astype(np.float32).tolist()


def run_commit_baseline(data_dir: str, seconds: float) -> None:
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    vectors = store_vectors()
    print(json.dumps({
        "disk_sync_p50_ms": disk_sync_p50_ms(data_dir),
        "one_commit_per_store_per_s": one_commit_per_store_rate(f"{data_dir}/db", vectors, seconds),
    }))


def slow_sync_env(build_dir: str, delay_ms: float) -> dict[str, str]:
    """The environment that makes every sync wait delay_ms first (bench/slow_sync.c)."""
    library = Path(build_dir) / "slow_sync.so"
    source = Path(__file__).with_name("slow_sync.c")
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"], check=True)
    preload = " ".join(filter(None, [str(library), os.environ.get("LD_PRELOAD", "")]))
    return {**os.environ, "LD_PRELOAD": preload, "SEMCACHE_BENCH_SYNC_DELAY_US": str(int(delay_ms * 1000))}


def lookup_figures(
    address: str, metrics_address: str, seconds: float, server_pid: int, rounds: int = 12, batch_calls: int = 20
) -> dict[str, float]:
    """Targets 1-3: single-client latencies, 32-client semantic Lookups, the embedder's rates."""
    channel = grpc.insecure_channel(address)
    health = health_pb2_grpc.HealthStub(channel)
    embedder = load_embedder()
    r: dict[str, float] = {}
    batch = texts(32 * batch_calls, offset=20_000)
    for t in batch[:20]:
        embedder.embed([t])
    batch_qps = [embedder_batch_qps(embedder, batch)]

    partition = {"namespace": "perf", "model": "m"}
    with Client(address) as client:
        stored = texts(200)
        for t in stored:
            client.store(partition, t, "answer")
        probe = texts(2000, offset=10_000)
        for t in probe[:20]:
            client.lookup(partition, t + " warm")
        embed_before = [metric(metrics_address, f"semcache_embed_seconds_{k}") for k in ("sum", "count")]
        single = interleaved({
            "embed_p50_ms": lambda i: embedder.embed([probe[i]]),
            "semantic_lookup_p50_ms": lambda i: client.lookup(partition, probe[i]),
            "exact_hit_p50_ms": lambda i: client.lookup(partition, stored[i % 200]),
            "health_p50_ms": lambda i: health.Check(health_pb2.HealthCheckRequest()),
        }, rounds=rounds)
        r.update({name: p50_ms(samples) for name, samples in single.items()})
        embed_after = [metric(metrics_address, f"semcache_embed_seconds_{k}") for k in ("sum", "count")]
        r["server_embed_mean_ms"] = 1000 * (embed_after[0] - embed_before[0]) / max(1.0, embed_after[1] - embed_before[1])
    channel.close()
    lookups = texts(200_000, offset=100_000)
    runs = []
    for run in range(2):  # alternated with the embedder's own rate: this machine drifts
        runs.append(concurrent_rate(
            address, 32, seconds,
            lambda c, t, i, run=run: c.lookup(partition, lookups[(t * 6000 + run * 3000 + i) % len(lookups)]),
            server_pid,
        ))
        batch_qps.append(embedder_batch_qps(embedder, batch))
    r["semantic_lookups_32_qps"] = sum(x.per_second for x in runs) / len(runs)
    r["semantic_lookup_32_client_cpu_ms"] = sum(x.client_cpu_ms for x in runs) / len(runs)
    r["semantic_lookup_32_server_cpu_ms"] = sum(x.server_cpu_ms for x in runs) / len(runs)
    r["embedder_batch_qps"] = sum(batch_qps) / len(batch_qps)
    r["batcher_32_threads_in_process_qps"] = batcher_rate(embedder, lookups, 32, seconds)
    return r


def store_figures(
    address: str, metrics_address: str, seconds: float, baseline: Callable[[], dict[str, float]], server_pid: int
) -> dict[str, float]:
    """Target 4: Stores with client vectors from 1 and 32 gRPC clients against one commit per Store."""
    r = baseline()
    vectors = store_vectors()
    store_partition = {"namespace": "perf-store", "model": "m"}
    r["store_1_client_per_s"] = concurrent_rate(
        address, 1, seconds, lambda c, t, i: c.store(store_partition, f"s1 {i}", "x" * 1000, embedding=vectors[i % 4096]),
        server_pid,
    ).per_second
    stores_before = metric(metrics_address, 'semcache_stores_total{namespace="perf-store"}')
    commits_before = metric(metrics_address, "semcache_store_commits_total")
    stores = concurrent_rate(
        address, 32, seconds,
        lambda c, t, i: c.store(store_partition, f"s32 {t} {i}", "x" * 1000, embedding=vectors[(t * 131 + i) % 4096]),
        server_pid,
    )
    r["store_32_clients_per_s"] = stores.per_second
    r["store_32_client_cpu_ms"] = stores.client_cpu_ms
    r["store_32_server_cpu_ms"] = stores.server_cpu_ms
    # 5x the one-commit rate, at the CPU each Store costs now: cores the load generator
    # alone, and the server alone, would need (the machine has os.cpu_count()).
    target_per_s = 5 * r["one_commit_per_store_per_s"]
    r["cores_for_5x_stores_load_generator"] = target_per_s * stores.client_cpu_ms / 1000
    r["cores_for_5x_stores_server"] = target_per_s * stores.server_cpu_ms / 1000
    r["stores_per_commit_32"] = (
        (metric(metrics_address, 'semcache_stores_total{namespace="perf-store"}') - stores_before)
        / max(1.0, metric(metrics_address, "semcache_store_commits_total") - commits_before)
    )
    return r


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="per concurrent measurement")
    parser.add_argument("--sync-delay-ms", type=float, default=0.0, help="emulate a disk whose syncs take this much longer")
    parser.add_argument("--stores-only", action="store_true", help="only the Store figures (target 4)")
    parser.add_argument("--commit-baseline", metavar="DIR", help=argparse.SUPPRESS)  # the child of commit_baseline()
    args = parser.parse_args()
    if args.commit_baseline:
        run_commit_baseline(args.commit_baseline, args.seconds)
        return
    rounds, batch_calls = 12, 20
    if args.quick:
        args.seconds, rounds, batch_calls = 0.3, 1, 2

    address, metrics_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    data_dir = tempfile.mkdtemp(prefix="semcache-perf-")
    env = slow_sync_env(data_dir, args.sync_delay_ms) if args.sync_delay_ms > 0 else dict(os.environ)
    with serve_in_child(address, data_dir, "--metrics-listen", metrics_address, env=env) as server:
        r: dict[str, float] = {}
        ratios: dict[str, float] = {}
        if not args.stores_only:
            r.update(lookup_figures(address, metrics_address, args.seconds, server.pid, rounds, batch_calls))
            ratios.update({
                "semantic_lookup_over_embed (target <= 1.25)": r["semantic_lookup_p50_ms"] / r["embed_p50_ms"],
                "lookups_32_over_embedder_batch (target >= 0.8)": r["semantic_lookups_32_qps"] / r["embedder_batch_qps"],
                "batcher_in_process_over_embedder_batch": r["batcher_32_threads_in_process_qps"] / r["embedder_batch_qps"],
                "exact_hit_over_health (target <= 1.3)": r["exact_hit_p50_ms"] / r["health_p50_ms"],
            })
        r.update(store_figures(
            address, metrics_address, args.seconds,
            lambda: commit_baseline(f"{data_dir}/inproc", args.seconds / 2, env), server.pid,
        ))
        ratios.update({
            "stores_32_over_one_commit_per_store (target >= 5)": r["store_32_clients_per_s"] / r["one_commit_per_store_per_s"],
            "stores_32_over_1_client": r["store_32_clients_per_s"] / r["store_1_client_per_s"],
        })
    result = {
        "figures": {k: round(v, 3) for k, v in r.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "machine": {"cpus": os.cpu_count(), "sync_delay_ms": args.sync_delay_ms},
    }
    write_report(result, args.json)


if __name__ == "__main__":
    main()
