"""Speed ratios of issue targets 1-4, measured in one run on one machine.

    python bench/perf.py [--json bench/results/perf.json] [--seconds 8]

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
                              runs side by side), before and after the concurrent runs
  semantic_lookups_32_qps     32 clients, semantic Lookups per second
  batcher_32_threads_in_process_qps   32 threads of this process through the server's
                              batcher, no gRPC (what batching alone achieves)
  one_commit_per_store_per_s  in-process, on the same filesystem, fsync on: Stores
                              with client vectors, each in its own commit
  store_1_client_per_s        one gRPC client, Stores with client vectors
  store_32_clients_per_s      32 gRPC clients, Stores with client vectors (group commit)
  stores_per_commit_32        semcache_store_commits_total over those Stores
and prints the ratios the targets name.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from semcache.cache import SemanticCache
from semcache.client import Client
from semcache.embedder import BatchingEmbedder, load_embedder
from semcache.partition import PartitionKey
from semcache.settings import Settings

QUERY_TEMPLATES = [
    "how do I {} my {} account", "can you help me {} the {} order", "what happens if I {} a {} payment",
    "is it possible to {} my {} card", "why can't I {} the {} transfer",
]
VERBS = ["cancel", "update", "close", "verify", "reset", "freeze", "change", "track", "renew", "dispute"]
NOUNS = ["savings", "business", "joint", "premium", "student", "travel", "virtual", "old", "new", "family"]


def texts(count: int, offset: int = 0) -> list[str]:
    out = []
    i = offset
    while len(out) < count:
        t = QUERY_TEMPLATES[i % 5].format(VERBS[(i // 5) % 10], NOUNS[(i // 50) % 10]) + f" (case {i})"
        out.append(t)
        i += 1
    return out


def p50_ms(samples: list[float]) -> float:
    return float(np.percentile(np.asarray(samples) * 1000, 50))


def interleaved(calls: dict[str, Callable[[int], object]], rounds: int = 12, block: int = 25) -> dict[str, list[float]]:
    """Seconds per call of each kind, run in alternating blocks; call(i) gets a fresh i."""
    out: dict[str, list[float]] = {name: [] for name in calls}
    i = 0
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(block):
                t = time.perf_counter()
                call(i)
                out[name].append(time.perf_counter() - t)
                i += 1
    return out


def embedder_batch_qps(embedder, batch: list[str]) -> float:
    """Texts/s of the embedder on its own: the better of 32-text calls and one call for all."""
    started = time.perf_counter()
    for i in range(0, len(batch), 32):
        embedder.embed(batch[i:i + 32])
    in_32s = len(batch) / (time.perf_counter() - started)
    started = time.perf_counter()
    embedder.embed(batch)
    return max(in_32s, len(batch) / (time.perf_counter() - started))


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


def metric(address: str, name: str) -> float:
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if values else 0.0


def concurrent_rate(address: str, clients: int, seconds: float, work) -> float:
    """Calls per second of `work(client, thread_index, i)` from `clients` threads."""
    counts = [0] * clients
    window = [0.0, 0.0]

    def open_window() -> None:
        window[0] = time.perf_counter()
        window[1] = window[0] + seconds

    barrier = threading.Barrier(clients + 1, action=open_window)

    def run(n: int) -> None:
        with Client(address) as client:
            client.stats()
            barrier.wait()
            i = 0
            while time.perf_counter() < window[1]:
                work(client, n, i)
                i += 1
            counts[n] = i

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - window[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json")
    parser.add_argument("--seconds", type=float, default=8.0, help="per concurrent measurement")
    args = parser.parse_args()

    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    address, metrics_address = (f"127.0.0.1:{port}" for port in ports)
    data_dir = tempfile.mkdtemp(prefix="semcache-perf-")
    log = open(Path(data_dir) / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "semcache", "serve", "--listen", address, "--data-dir", f"{data_dir}/d",
         "--metrics-listen", metrics_address],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        channel = grpc.insecure_channel(address)
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        embedder = load_embedder()
        r: dict[str, float] = {}
        batch = texts(32 * 20, offset=20_000)
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
            })
            r.update({name: p50_ms(samples) for name, samples in single.items()})
            embed_after = [metric(metrics_address, f"semcache_embed_seconds_{k}") for k in ("sum", "count")]
            r["server_embed_mean_ms"] = 1000 * (embed_after[0] - embed_before[0]) / max(1.0, embed_after[1] - embed_before[1])
        lookups = texts(200_000, offset=100_000)
        r["semantic_lookups_32_qps"] = concurrent_rate(
            address, 32, args.seconds, lambda c, t, i: c.lookup(partition, lookups[(t * 6000 + i) % len(lookups)])
        )
        batch_qps.append(embedder_batch_qps(embedder, batch))
        r["embedder_batch_qps"] = sum(batch_qps) / 2
        r["batcher_32_threads_in_process_qps"] = batcher_rate(embedder, lookups, 32, args.seconds)
        del embedder

        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((4096, 384)).astype(np.float32).tolist()
        r["one_commit_per_store_per_s"] = one_commit_per_store_rate(f"{data_dir}/inproc", vectors, args.seconds / 2)
        store_partition = {"namespace": "perf-store", "model": "m"}
        r["store_1_client_per_s"] = concurrent_rate(
            address, 1, args.seconds, lambda c, t, i: c.store(store_partition, f"s1 {i}", "x" * 1000, embedding=vectors[i % 4096])
        )
        stores_before = metric(metrics_address, 'semcache_stores_total{namespace="perf-store"}')
        commits_before = metric(metrics_address, "semcache_store_commits_total")
        r["store_32_clients_per_s"] = concurrent_rate(
            address, 32, args.seconds,
            lambda c, t, i: c.store(store_partition, f"s32 {t} {i}", "x" * 1000, embedding=vectors[(t * 131 + i) % 4096]),
        )
        r["stores_per_commit_32"] = (
            (metric(metrics_address, 'semcache_stores_total{namespace="perf-store"}') - stores_before)
            / max(1.0, metric(metrics_address, "semcache_store_commits_total") - commits_before)
        )
        ratios = {
            "semantic_lookup_over_embed (target <= 1.25)": r["semantic_lookup_p50_ms"] / r["embed_p50_ms"],
            "lookups_32_over_embedder_batch (target >= 0.8)": r["semantic_lookups_32_qps"] / r["embedder_batch_qps"],
            "batcher_in_process_over_embedder_batch": r["batcher_32_threads_in_process_qps"] / r["embedder_batch_qps"],
            "exact_hit_over_health (target <= 1.3)": r["exact_hit_p50_ms"] / r["health_p50_ms"],
            "stores_32_over_one_commit_per_store (target >= 5)": r["store_32_clients_per_s"] / r["one_commit_per_store_per_s"],
            "stores_32_over_1_client": r["store_32_clients_per_s"] / r["store_1_client_per_s"],
        }
        result = {
            "figures": {k: round(v, 3) for k, v in r.items()},
            "ratios": {k: round(v, 3) for k, v in ratios.items()},
            "machine": {"cpus": os.cpu_count()},
        }
        print(json.dumps(result, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        server.terminate()
        server.wait(60)
        log.close()


if __name__ == "__main__":
    main()
