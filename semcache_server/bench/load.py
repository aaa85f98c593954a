"""A bounded load run against a running server: latency percentiles and throughput.

Each concurrency level runs for `duration_seconds`, with one channel per client
thread, a lookup/store mix over real queries from a dataset, text only (the server
embeds, as in production). It targets only the address given and stops by itself.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Sequence

import grpc
import numpy as np

from semcache_server.client import Client


def _percentiles(latencies_seconds: Sequence[float]) -> dict[str, float]:
    if not latencies_seconds:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0}
    ms = np.asarray(latencies_seconds) * 1000.0
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 3) for q in (50, 95, 99)}


def run_level(
    address: str, namespace: str, texts: Sequence[str], concurrency: int, duration_seconds: float,
    lookup_ratio: float, seed: int, token: str | None,
) -> dict:
    partition = {"namespace": namespace, "model": "bench-load"}
    lookup_latencies: list[list[float]] = [[] for _ in range(concurrency)]
    store_latencies: list[list[float]] = [[] for _ in range(concurrency)]
    hits = [0] * concurrency
    errors: list[str] = []
    window = [0.0, 0.0]  # started, deadline: set by the barrier before any worker is released

    def open_window() -> None:
        window[0] = time.perf_counter()
        window[1] = window[0] + duration_seconds

    start_barrier = threading.Barrier(concurrency + 1, action=open_window)

    def worker(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        with Client(address, token=token, timeout_seconds=30) as client:
            client.stats(partition)  # connect before the clock starts
            start_barrier.wait()
            while time.perf_counter() < window[1]:
                text = rng.choice(texts)
                started = time.perf_counter()
                try:
                    if rng.random() < lookup_ratio:
                        hit = client.lookup(partition, text).hit
                        lookup_latencies[n].append(time.perf_counter() - started)
                        hits[n] += hit
                    else:
                        client.store(partition, text, f"answer to: {text}")
                        store_latencies[n].append(time.perf_counter() - started)
                except grpc.RpcError as e:
                    errors.append(f"{e.code().name}: {e.details()}")
                    if len(errors) > 100:
                        return

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(concurrency)]
    for t in threads:
        t.start()
    start_barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - window[0]
    lookups = [x for per in lookup_latencies for x in per]
    stores = [x for per in store_latencies for x in per]
    return {
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "requests": len(lookups) + len(stores),
        "requests_per_second": round((len(lookups) + len(stores)) / elapsed, 1),
        "lookups": len(lookups),
        "lookups_per_second": round(len(lookups) / elapsed, 1),
        "lookup_latency": _percentiles(lookups),
        "stores": len(stores),
        "store_latency": _percentiles(stores),
        "hit_ratio": round(sum(hits) / len(lookups), 4) if lookups else 0.0,
        "errors": len(errors),
        "first_errors": errors[:3],
    }


def run_load(
    address: str,
    texts: Sequence[str],
    *,
    concurrency_levels: Sequence[int],
    duration_seconds: float,
    lookup_ratio: float,
    warm_entries: int,
    seed: int = 0,
    token: str | None = None,
) -> dict:
    """Warm a fresh namespace with some of the texts, run each level, then remove the namespace."""
    namespace = f"semcache-bench-load-{uuid.uuid4().hex[:12]}"
    partition = {"namespace": namespace, "model": "bench-load"}
    rng = random.Random(seed)
    with Client(address, token=token, timeout_seconds=60) as client:
        for text in rng.sample(list(texts), min(warm_entries, len(texts))):
            client.store(partition, text, f"answer to: {text}")
        try:
            levels = [
                run_level(address, namespace, texts, c, duration_seconds, lookup_ratio, seed, token)
                for c in concurrency_levels
            ]
        finally:
            client.invalidate({"namespace": namespace}, whole_namespace=True)
    return {
        "address": address,
        "duration_seconds_per_level": duration_seconds,
        "lookup_ratio": lookup_ratio,
        "warm_entries": warm_entries,
        "distinct_texts": len(texts),
        "levels": levels,
    }


def load_table(result: dict) -> str:
    lines = [
        f"load on {result['address']}: {result['duration_seconds_per_level']} s per level, "
        f"{result['lookup_ratio']:.0%} lookups, {result['distinct_texts']} distinct texts",
        f"{'clients':>7}  {'req/s':>8}  {'lookup p50':>10}  {'p95':>8}  {'p99':>8}  "
        f"{'store p50':>9}  {'p99':>8}  {'hit':>6}  {'errors':>6}",
    ]
    for level in result["levels"]:
        lk, st = level["lookup_latency"], level["store_latency"]
        lines.append(
            f"{level['concurrency']:>7}  {level['requests_per_second']:>8.1f}  {lk['p50_ms']:>8.2f}ms  "
            f"{lk['p95_ms']:>6.2f}ms  {lk['p99_ms']:>6.2f}ms  {st['p50_ms']:>7.2f}ms  {st['p99_ms']:>6.2f}ms  "
            f"{level['hit_ratio']:>6.3f}  {level['errors']:>6}"
        )
    return "\n".join(lines)
