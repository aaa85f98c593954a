"""The redis backend's figures: 1, 2 and 3 semcache frontends against one Redis Cluster
(3 primaries, 3 replicas, Debian's redis-server on loopback, AOF everysec) on this machine.

- Lookups/s and p50/p99 of 32 client threads spread over the frontends, with the CPU each
  Lookup cost the frontends and Redis (2 cores bound everything here);
- the change-log lag: a Store acknowledged by frontend A until frontend B serves it as a
  semantic hit (B polls a Lookup; each poll's own time is in the figure);
- a new frontend's warm-up (its first Lookup loads the partition) for --warm-entries,
  and memory per entry in Redis (one copy: primaries only) and in the frontend.

Clients send their own vectors (384 dims, random unit vectors; Lookups at cosine 0.97 to a
stored one), so the model's CPU does not hide the backend's.

    python bench/redis_cluster.py [--entries 20000] [--warm-entries 100000] [--json bench/results/redis-cluster.json]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from semcache_server.bench.harness import (
    bench_parser,
    cpu_seconds,
    free_port,
    percentile_ms,
    rss_anon_bytes,
    start_server,
    stop_server,
    write_report,
)
from semcache_server.client import Client
from semcache_server.partition import PartitionKey
from semcache_server.redis_backend import scripts
from semcache_server.redis_backend.connection import connect, parse_backend
from semcache_server.redis_backend.keys import REGISTRY, PartitionKeys, registry_value
from semcache_server.redis_backend.local_cluster import LocalCluster
from semcache_server.redis_backend.writer import LOG_MAX_LEN, NO_TTL_EXPIRY_SECONDS
from semcache_server.v1.records_pb2 import EntryRecord

DIMENSION = 384
LOAD = {"namespace": "bench", "model": "m", "prompt_version": "v1"}
LAG = {"namespace": "lag", "model": "m", "prompt_version": "v1"}
WARM = {"namespace": "warm", "model": "m", "prompt_version": "v1"}


def unit_vectors(count: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, DIMENSION)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def near(vector: np.ndarray, similarity: float, rng: np.random.Generator) -> list[float]:
    noise = rng.standard_normal(DIMENSION)
    noise -= noise.dot(vector) * vector
    noise /= np.linalg.norm(noise)
    return list(similarity * vector + np.sqrt(1 - similarity**2) * noise)


def start_frontend(directory: Path, url: str) -> tuple[object, str]:
    """A `semcache serve` on the cluster (url ""): the local LMDB backend, for comparison)."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    backend = ["--backend", url] if url else []
    process = start_server(
        address, directory / f"frontend-{port}", *backend, "--sync-writes", "false", "--embedding-model", "none",
        "--embedding-dimension", str(DIMENSION), "--verifier", "none", "--log-level", "warning",
        log_path=directory / f"frontend-{port}.log",
    )
    return process, address


def words(i: int) -> str:
    """i in letters: the guard refuses a match whose numbers differ, and these are paraphrases."""
    out = ""
    while True:
        i, r = divmod(i, 26)
        out += chr(97 + r)
        if not i:
            return out


def fill_by_rpc(address: str, partition: dict, vectors: np.ndarray) -> None:
    with Client(address, timeout_seconds=120) as client:
        for start in range(0, len(vectors), 500):
            client.store_batch([
                {"partition": partition, "query": f"stored question {words(start + i)}", "response": f"answer {start + i}",
                 "embedding": list(map(float, v))}
                for i, v in enumerate(vectors[start:start + 500])
            ])


def fill_by_script(url: str, partition: dict, count: int) -> float:
    """Entries written with the STORE script a Store runs, pipelined (a Store RPC per entry
    would take minutes here); returns the seconds it took."""
    client = connect(parse_backend(url), 30.0)
    key = PartitionKey(partition["namespace"], partition["model"], partition["prompt_version"])
    keys = PartitionKeys.of(key)
    started, now = time.monotonic(), time.time()
    node = client.get_redis_connection(client.get_node_from_key(keys.meta))  # one shard holds the partition
    for start in range(0, count, 1000):
        pipe = node.pipeline(transaction=False)
        vectors = unit_vectors(min(1000, count - start), seed=start)
        for i, vector in enumerate(vectors, start):
            record = EntryRecord(query=f"warm {i}", normalized_query=f"warm {i}", response=b"r" * 200, created_at=now)
            pipe.eval(
                scripts.STORE, 6, keys.meta, keys.ids, keys.vectors, keys.exact, keys.log, keys.entry(i + 1),
                i + 1, record.SerializeToString(), int((now + NO_TTL_EXPIRY_SECONDS) * 1000), 2000,
                f"warm {i}\x00".encode(), vector.tobytes(), key.namespace, key.model, key.version, repr(now),
                LOG_MAX_LEN, "0.0", keys.entry_prefix,
            )
        pipe.execute()
    client.hset(REGISTRY, keys.tag, registry_value(key))
    client.close()
    return time.monotonic() - started


def redis_used_bytes(cluster: LocalCluster) -> int:
    return sum(cluster.used_memory(port) for port in cluster.primaries())


def throughput(addresses: list[str], vectors: np.ndarray, seconds: float, pids: list[int], redis_pids: list[int]) -> dict:
    clients = 32
    latencies: list[list[float]] = [[] for _ in range(clients)]
    hits = [0] * clients
    errors: list[str] = []
    window = [0.0, 0.0]
    cpu: dict[str, float] = {}

    def open_window() -> None:
        cpu["frontends"] = sum(cpu_seconds(p) for p in pids)
        cpu["redis"] = sum(cpu_seconds(p) for p in redis_pids)
        cpu["client"] = cpu_seconds(os.getpid())
        window[:] = [time.perf_counter(), time.perf_counter() + seconds]

    barrier = threading.Barrier(clients + 1, action=open_window)

    def run(n: int) -> None:
        rng = np.random.default_rng(n)
        queries = [near(vectors[int(rng.integers(len(vectors)))], 0.97, rng) for _ in range(200)]
        with Client(addresses[n % len(addresses)], timeout_seconds=30) as client:
            client.lookup(LOAD, "warm up", embedding=queries[0])  # the frontend loads the partition before the clock starts
            barrier.wait()
            i = 0
            while time.perf_counter() < window[1]:
                started = time.perf_counter()
                try:
                    query = f"in other words {words(n)} {words(i)}"
                    hits[n] += client.lookup(LOAD, query, embedding=queries[i % len(queries)]).hit
                except Exception as e:  # counted and reported, not hidden
                    errors.append(repr(e)[:200])
                latencies[n].append(time.perf_counter() - started)
                i += 1

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - window[0]
    flat = [x for per in latencies for x in per]
    calls = max(1, len(flat))
    return {
        "frontends": len(addresses), "clients": clients, "lookups_per_second": round(len(flat) / elapsed, 1),
        "p50_ms": round(percentile_ms(flat, 50), 2), "p99_ms": round(percentile_ms(flat, 99), 2),
        "hit_rate": round(sum(hits) / calls, 4), "errors": len(errors),
        "frontend_cpu_ms_per_lookup": round(1000 * (sum(cpu_seconds(p) for p in pids) - cpu["frontends"]) / calls, 3),
        "redis_cpu_ms_per_lookup": round(1000 * (sum(cpu_seconds(p) for p in redis_pids) - cpu["redis"]) / calls, 3),
        "client_cpu_ms_per_lookup": round(1000 * (cpu_seconds(os.getpid()) - cpu["client"]) / calls, 3),
    }


def change_log_lag(a: str, b: str, samples: int) -> dict:
    lags, rng = [], np.random.default_rng(7)
    vectors = unit_vectors(samples, seed=99)
    with Client(a) as writer, Client(b) as reader:
        reader.lookup(LAG, "warm up", embedding=list(map(float, vectors[0])))  # b holds the partition
        for i, vector in enumerate(vectors):
            probe = near(vector, 0.97, rng)
            writer.store(LAG, f"lag question {words(i)}", "r", embedding=list(map(float, vector)))
            acknowledged = time.perf_counter()
            while not reader.lookup(LAG, f"in other words {words(i)}", embedding=probe).hit:
                if time.perf_counter() - acknowledged > 10:
                    raise RuntimeError("a Store on A was not served by B within 10 s")
            lags.append(time.perf_counter() - acknowledged)
    return {
        "samples": samples, "p50_ms": round(percentile_ms(lags, 50), 2), "p99_ms": round(percentile_ms(lags, 99), 2),
        "max_ms": round(1000 * max(lags), 2),
    }


def warm_up(directory: Path, cluster: LocalCluster, count: int) -> dict:
    before = redis_used_bytes(cluster)
    fill_seconds = fill_by_script(cluster.url, WARM, count)
    redis_bytes = redis_used_bytes(cluster) - before
    process, address = start_frontend(directory, cluster.url)
    try:
        rss_before = rss_anon_bytes(process.pid)
        with Client(address, timeout_seconds=600) as client:
            started = time.perf_counter()
            client.lookup(WARM, "first lookup", embedding=list(map(float, unit_vectors(1, seed=0)[0])))
            seconds = time.perf_counter() - started
            entries = client.stats(WARM).entries
        rss_after = rss_anon_bytes(process.pid)
    finally:
        stop_server(process)
    return {
        "entries": entries, "fill_seconds": round(fill_seconds, 1), "warm_up_seconds": round(seconds, 2),
        "redis_bytes_per_entry_one_copy": round(redis_bytes / count), "record_response_bytes": 200,
        "frontend_rss_bytes_per_entry": round((rss_after - rss_before) / count),
    }


def failover(directory: Path) -> dict:
    """Lookups from 4 threads while the primary holding their partition is killed: how long
    they fail, with which codes, and whether any Store acknowledged with a replica is lost."""
    import grpc

    partition = {"namespace": "failover", "model": "m", "prompt_version": "v1"}
    with LocalCluster(directory / "failover", node_timeout_ms=1000) as cluster:
        process, address = start_frontend_waiting(directory, cluster.url)
        try:
            vectors = unit_vectors(200, seed=5)
            with Client(address, timeout_seconds=10) as client:
                stored = [client.store(partition, f"q {words(i)}", "r", embedding=list(map(float, v))).entry_id
                          for i, v in enumerate(vectors)]
            owner = cluster.primary_for(PartitionKeys.of(PartitionKey("failover", "m", "v1")).tag)
            failures: list[tuple[float, str]] = []
            stop = threading.Event()

            def load(n: int) -> None:
                with Client(address, timeout_seconds=5) as client:
                    i = n
                    while not stop.is_set():
                        try:
                            client.lookup(partition, f"q {words(i % 200)}", embedding=list(map(float, vectors[i % 200])))
                        except grpc.RpcError as e:
                            failures.append((time.monotonic(), e.code().name))
                        i += 4

            threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
            for thread in threads:
                thread.start()
            time.sleep(1.0)
            killed_at = time.monotonic()
            cluster.kill(owner)
            time.sleep(8.0)
            stop.set()
            for thread in threads:
                thread.join()
            with Client(address, timeout_seconds=10) as client:
                lost = sum(
                    client.lookup(partition, f"q {words(i)}", embedding=list(map(float, v))).entry_id != entry
                    for i, (v, entry) in enumerate(zip(vectors, stored, strict=True))
                )
        finally:
            stop_server(process)  # type: ignore[arg-type]
    return {
        "cluster_node_timeout_ms": 1000, "redis_wait_replicas": 1,
        "failing_seconds": round(failures[-1][0] - killed_at, 2) if failures else 0.0,
        "failed_lookups": len(failures), "codes": sorted({code for _, code in failures}),
        "acknowledged_stores": len(stored), "lost_after_failover": int(lost),
    }


def start_frontend_waiting(directory: Path, url: str) -> tuple[object, str]:
    """A frontend whose Stores wait for one replica."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    process = start_server(
        address, directory / f"frontend-{port}", "--backend", url, "--redis-wait-replicas", "1",
        "--embedding-model", "none", "--embedding-dimension", str(DIMENSION), "--verifier", "none",
        "--log-level", "warning", log_path=directory / f"frontend-{port}.log",
    )
    return process, address


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--entries", type=int, default=20000)
    parser.add_argument("--warm-entries", type=int, default=100000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--lag-samples", type=int, default=300)
    args = parser.parse_args()
    if args.quick:
        args.entries, args.warm_entries, args.seconds, args.lag_samples = 500, 2000, 1.0, 10
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(Path(tmp) / "redis") as cluster:
        directory = Path(tmp)
        frontends = [start_frontend(directory, cluster.url) for _ in range(3)]
        try:
            vectors = unit_vectors(args.entries, seed=1)
            fill_by_rpc(frontends[0][1], LOAD, vectors)
            redis_pids = [p.pid for p in cluster.processes.values()]
            runs = []
            for count in (1, 2, 3):
                used = frontends[:count]
                runs.append(throughput(
                    [a for _, a in used], vectors, args.seconds, [p.pid for p, _ in used], redis_pids,  # type: ignore[attr-defined]
                ))
                print(json.dumps(runs[-1]), flush=True)
            lag = change_log_lag(frontends[0][1], frontends[1][1], args.lag_samples)
        finally:
            for process, _ in frontends:
                stop_server(process)  # type: ignore[arg-type]
        local, address = start_frontend(directory, "")  # the same load on one node's LMDB, for the ratio
        try:
            fill_by_rpc(address, LOAD, vectors)
            local_run = throughput([address], vectors, args.seconds, [local.pid], [])  # type: ignore[attr-defined]
            print(json.dumps(local_run), flush=True)
        finally:
            stop_server(local)  # type: ignore[arg-type]
        warm = warm_up(directory, cluster, args.warm_entries)
        failed_over = failover(directory)
    write_report({
        "machine": f"{os.cpu_count()} cores", "cluster": "3 primaries + 3 replicas, appendfsync everysec, loopback",
        "entries": args.entries, "throughput": runs, "local_backend_one_frontend": local_run,
        "change_log_lag": lag, "warm_up": warm, "failover": failed_over,
    }, args.json)


if __name__ == "__main__":
    main()
