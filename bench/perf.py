"""Speed ratios of issue targets 1-4, measured in one run on one machine.

    python bench/perf.py [--json bench/results/perf.json] [--seconds 8]

Starts `semcache serve` (ONNX backend, fsync on) in a child process on a free
loopback port and measures, in this order:
  embed_p50_ms              the bare in-process embedding of one short query (same model)
  semantic_lookup_p50_ms    one client, Lookups that need an embedding (distinct texts)
  exact_hit_p50_ms          one client, Lookups served by the exact tier
  health_p50_ms             one client, the gRPC health Check (a no-op)
  embedder_batch_qps        the embedder's own throughput on batches of 32
  semantic_lookups_32_qps   32 clients, semantic Lookups per second
  store_1_client_per_s      one client, Stores with client vectors: one commit per Store
  store_32_clients_per_s    32 clients, Stores with client vectors: group commit
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
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from semcache.client import Client
from semcache.embedder import load_embedder

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


def timed(call, count: int) -> list[float]:
    out = []
    for i in range(count):
        t = time.perf_counter()
        call(i)
        out.append(time.perf_counter() - t)
    return out


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
    parser.add_argument("--samples", type=int, default=300, help="per single-client measurement")
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    data_dir = tempfile.mkdtemp(prefix="semcache-perf-")
    log = open(Path(data_dir) / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "semcache", "serve", "--listen", address, "--data-dir", f"{data_dir}/d"],
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
        n = args.samples
        probe = texts(n, offset=10_000)
        for t in probe[:20]:
            embedder.embed([t])
        r["embed_p50_ms"] = p50_ms(timed(lambda i: embedder.embed([probe[i]]), n))
        batch = texts(32 * 20, offset=20_000)
        started = time.perf_counter()
        for i in range(0, len(batch), 32):
            embedder.embed(batch[i:i + 32])
        r["embedder_batch_qps"] = len(batch) / (time.perf_counter() - started)
        del embedder

        partition = {"namespace": "perf", "model": "m"}
        with Client(address) as client:
            stored = texts(200)
            for t in stored:
                client.store(partition, t, "answer")
            for t in probe[:20]:
                client.lookup(partition, t + " warm")
            r["semantic_lookup_p50_ms"] = p50_ms(timed(lambda i: client.lookup(partition, probe[i]), n))
            r["exact_hit_p50_ms"] = p50_ms(timed(lambda i: client.lookup(partition, stored[i % 200]), n))
            r["health_p50_ms"] = p50_ms(timed(lambda i: health.Check(health_pb2.HealthCheckRequest()), n))
        lookups = texts(200_000, offset=100_000)
        r["semantic_lookups_32_qps"] = concurrent_rate(
            address, 32, args.seconds, lambda c, t, i: c.lookup(partition, lookups[(t * 6000 + i) % len(lookups)])
        )
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((4096, 384)).astype(np.float32).tolist()
        store_partition = {"namespace": "perf-store", "model": "m"}
        r["store_1_client_per_s"] = concurrent_rate(
            address, 1, args.seconds, lambda c, t, i: c.store(store_partition, f"s1 {i}", "x" * 1000, embedding=vectors[i % 4096])
        )
        r["store_32_clients_per_s"] = concurrent_rate(
            address, 32, args.seconds,
            lambda c, t, i: c.store(store_partition, f"s32 {t} {i}", "x" * 1000, embedding=vectors[(t * 131 + i) % 4096]),
        )
        ratios = {
            "semantic_lookup_over_embed (target <= 1.25)": r["semantic_lookup_p50_ms"] / r["embed_p50_ms"],
            "lookups_32_over_embedder_batch (target >= 0.8)": r["semantic_lookups_32_qps"] / r["embedder_batch_qps"],
            "exact_hit_over_health (target <= 1.3)": r["exact_hit_p50_ms"] / r["health_p50_ms"],
            "stores_32_over_1 (target >= 5)": r["store_32_clients_per_s"] / r["store_1_client_per_s"],
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
