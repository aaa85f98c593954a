"""The most calls per second gRPC itself allows here: health Checks (a no-op) from 32 clients.

    python bench/grpc_noop.py [--seconds 4] [--rounds 2] [--json FILE] [--quick]

Starts a gRPC server in a child process with only the health service (a thread pool,
as `semcache serve` has) and calls Check from 1 and from 32 client threads, each with a
channel of its own, as bench/perf.py's clients do. Prints calls/s and the CPU time per
call of the server and of this process (the load generator). On a 2-core machine the
32-client rate is the ceiling of any unary call from Python clients: bench/perf.py's
Store target (5x the one-commit rate) is out of reach where it is below that.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from semcache_server.bench.harness import bench_parser, cpu_seconds, free_port, stop_server, write_report


def serve(port: int) -> None:
    sys.setswitchinterval(0.0005)  # as `semcache serve`
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=72))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def rate(address: str, server_pid: int, clients: int, seconds: float) -> dict[str, float]:
    counts = [0] * clients
    stop = [0.0]
    barrier = threading.Barrier(clients + 1)

    def run(n: int) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            stub.Check(health_pb2.HealthCheckRequest())
            barrier.wait()
            i = 0
            while time.perf_counter() < stop[0]:
                stub.Check(health_pb2.HealthCheckRequest())
                i += 1
            counts[n] = i

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    server_cpu, client_cpu = cpu_seconds(server_pid), cpu_seconds(os.getpid())
    started = time.perf_counter()
    stop[0] = started + seconds
    barrier.wait()
    for t in threads:
        t.join()
    calls = max(1, sum(counts))
    return {
        "calls_per_s": round(calls / (time.perf_counter() - started), 1),
        "server_cpu_ms_per_call": round(1000 * (cpu_seconds(server_pid) - server_cpu) / calls, 3),
        "client_cpu_ms_per_call": round(1000 * (cpu_seconds(os.getpid()) - client_cpu) / calls, 3),
    }


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the child
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.quick:
        args.seconds, args.rounds = 0.3, 1
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    rows = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        for _ in range(args.rounds):
            for clients in (1, 32):
                rows.append({"clients": clients, **rate(f"127.0.0.1:{port}", server.pid, clients, args.seconds)})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        stop_server(server, 30)
    write_report({"rounds": rows}, args.json)


if __name__ == "__main__":
    main()
