"""More semantic Lookups than the model can embed: goodput, refusals, latency, health.

    python bench/overload.py [--overload 2] [--seconds 10] [--deadline-seconds 0.5] [--json FILE] [--quick]

Starts `semcache serve` (ONNX backend) in a child process on a free loopback port,
stores 200 entries, and measures its capacity: semantic Lookups/s from 32 clients in a
closed loop. Then it sends Lookups of new texts open-loop (at a fixed rate, whatever
the answers do, as independent application requests arrive) at `--overload` times that
capacity, twice:

  with_deadline   each call with a --deadline-seconds deadline (what a caller that
                  would rather call the LLM than wait sets)
  no_deadline     the Python client's default 30 s timeout

and reports per phase: calls answered OK per second until the last call was answered
(goodput) and that over capacity, the
status codes, the OK calls' latency p50/p99, the latency of a health Check every
0.25 s during the flood (a liveness probe), and one Lookup's latency after the flood.
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from semcache_server.bench.harness import (
    bench_parser,
    concurrent_rate,
    free_port,
    percentile_ms,
    serve_in_child,
    texts,
    write_report,
)
from semcache_server.client import Client
from semcache_server.v1 import semcache_pb2 as pb
from semcache_server.v1 import semcache_pb2_grpc as pb_grpc

PARTITION = {"namespace": "perf", "model": "m"}


def percentiles_ms(samples: list[float]) -> list[float]:
    if not samples:
        return []
    return [round(percentile_ms(samples, q), 1) for q in (50, 99)]


def flood(address: str, rate: float, seconds: float, timeout_seconds: float, queries: list[str]) -> dict:
    """Lookups at `rate` per second for `seconds`, each with `timeout_seconds`; a health
    Check every 0.25 s on a channel of its own meanwhile."""
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.SemanticCacheStub(channel)
    codes: collections.Counter[str] = collections.Counter()
    ok_seconds: list[float] = []
    lock = threading.Lock()
    outstanding = threading.Semaphore(0)

    def done(future: grpc.Future, sent: float) -> None:
        code = future.code()
        with lock:
            codes[code.name] += 1
            if code == grpc.StatusCode.OK:
                ok_seconds.append(time.perf_counter() - sent)
        outstanding.release()

    health_seconds: list[float] = []
    health_errors: collections.Counter[str] = collections.Counter()
    stop = threading.Event()

    def probe() -> None:
        with grpc.insecure_channel(address) as health_channel:
            health = health_pb2_grpc.HealthStub(health_channel)
            while not stop.is_set():
                sent = time.perf_counter()
                try:
                    health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    health_seconds.append(time.perf_counter() - sent)
                except grpc.RpcError as e:
                    health_errors[e.code().name] += 1
                stop.wait(0.25)

    prober = threading.Thread(target=probe)
    prober.start()
    started = time.perf_counter()
    sent_count = 0
    while time.perf_counter() - started < seconds:
        due = started + sent_count / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        sent = time.perf_counter()
        request = pb.LookupRequest(partition=pb.Partition(**PARTITION), query=queries[sent_count % len(queries)])
        future = stub.Lookup.future(request, timeout=timeout_seconds)
        future.add_done_callback(lambda f, sent=sent: done(f, sent))
        sent_count += 1
    for _ in range(sent_count):  # every call answered (or timed out at the client)
        outstanding.acquire()
    elapsed = time.perf_counter() - started
    stop.set()
    prober.join()
    after = time.perf_counter()
    Client(address).lookup(PARTITION, f"one more question after the flood {time.time()}")
    after_ms = (time.perf_counter() - after) * 1000
    channel.close()
    return {
        "offered_per_s": round(sent_count / seconds, 1),
        "seconds_to_last_answer": round(elapsed, 1),
        "ok_per_s": round(codes["OK"] / elapsed, 1),
        "codes": dict(codes),
        "ok_latency_p50_p99_ms": percentiles_ms(ok_seconds),
        "health_p50_p99_ms": percentiles_ms(health_seconds),
        "health_max_ms": round(max(health_seconds) * 1000, 1) if health_seconds else None,
        "health_errors": dict(health_errors),
        "lookup_after_flood_ms": round(after_ms, 1),
    }


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--overload", type=float, default=2.0, help="offered rate over the measured capacity")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--deadline-seconds", type=float, default=0.5)
    args = parser.parse_args()
    capacity_seconds = 0.5 if args.quick else 4.0
    if args.quick:
        args.seconds = 0.5
    address = f"127.0.0.1:{free_port()}"
    data_dir = tempfile.mkdtemp(prefix="semcache-overload-")
    with serve_in_child(address, data_dir) as server:
        with Client(address) as client:
            for t in texts(200):
                client.store(PARTITION, t, "answer")
        lookups = texts(200_000, offset=100_000)
        capacity = concurrent_rate(
            address, 32, capacity_seconds, lambda c, t, i: c.lookup(PARTITION, lookups[(t * 6000 + i) % len(lookups)]), server.pid
        ).per_second
        rate = args.overload * capacity
        result: dict = {"capacity_32_clients_per_s": round(capacity, 1), "overload": args.overload}
        for phase, timeout_seconds, offset in (
            ("with_deadline", args.deadline_seconds, 300_000), ("no_deadline", 30.0, 400_000)
        ):
            result[phase] = flood(address, rate, args.seconds, timeout_seconds, texts(int(rate * args.seconds) + 1, offset))
            result[phase]["ok_over_capacity"] = round(result[phase]["ok_per_s"] / capacity, 3)
            print(phase, json.dumps(result[phase]), flush=True)
    result["machine"] = {"cpus": os.cpu_count()}
    write_report(result, args.json)


if __name__ == "__main__":
    main()
