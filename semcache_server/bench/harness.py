"""Helpers shared by the bench scripts and the tests: free loopback ports, `semcache
serve` in a child process, health, percentiles and JSON reports.

Nothing here reaches into the engine: scripts measure through the gRPC API, the
metrics endpoint, or the public classes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

QUERY_TEMPLATES = [
    "how do I {} my {} account", "can you help me {} the {} order", "what happens if I {} a {} payment",
    "is it possible to {} my {} card", "why can't I {} the {} transfer",
]
VERBS = ["cancel", "update", "close", "verify", "reset", "freeze", "change", "track", "renew", "dispute"]
NOUNS = ["savings", "business", "joint", "premium", "student", "travel", "virtual", "old", "new", "family"]


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """The parser every bench script starts from: --json FILE, and --quick, a run small
    enough for CI that only shows the script still works (its figures mean nothing)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--quick", action="store_true", help="a tiny run that checks the script works (CI)")
    return parser


def default_datasets_dir() -> Path:
    """../shared/datasets beside the checkout, where the labeled dev sets are."""
    return Path(__file__).resolve().parents[3] / "shared" / "datasets"


def texts(count: int, offset: int = 0) -> list[str]:
    """Distinct support-style questions, the same for the same (count, offset)."""
    out: list[str] = []
    i = offset
    while len(out) < count:
        out.append(QUERY_TEMPLATES[i % 5].format(VERBS[(i // 5) % 10], NOUNS[(i // 50) % 10]) + f" (case {i})")
        i += 1
    return out


def free_port() -> int:
    """A loopback port free at the time of the call."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health_status(address: str, timeout_seconds: float = 2) -> str:
    """The server's overall health status name (SERVING, ...), or the gRPC error code's name."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_seconds)
        except grpc.RpcError as e:
            return str(e.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def start_server(
    address: str, data_dir: str | Path, *extra: str, log_path: str | Path, env: dict[str, str] | None = None,
    serving_within_seconds: float = 180, command: Sequence[str] | None = None,
) -> subprocess.Popen:
    """`semcache serve --listen address --data-dir data_dir` in a child process (or
    `command` with those flags, for a wrapper of serve), its output appended to log_path
    (a pipe could fill and block it); returns once health says SERVING (env: variables
    added to this process's). Raises RuntimeError, with the log's tail, if it exits or never does."""
    program = list(command or [sys.executable, "-m", "semcache_server", "serve"])
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [*program, "--listen", address, "--data-dir", str(data_dir), *extra],
            env={**os.environ, **(env or {})}, stdout=log_file, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + serving_within_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = Path(log_path).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the server exited with {process.returncode}: {tail}")
        if health_status(address) == "SERVING":
            return process
        time.sleep(0.2)
    process.kill()
    process.wait()
    raise RuntimeError(f"the server at {address} did not report SERVING within {serving_within_seconds} s")


def stop_server(process: subprocess.Popen, timeout_seconds: float = 60) -> int:
    """SIGTERM (a graceful drain), then wait; SIGKILL if it does not exit in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


@contextlib.contextmanager
def serve_in_child(
    address: str, data_dir: str | Path, *extra: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """`semcache serve` on `address` with its data in data_dir/d and its log in
    data_dir/server.log; yields it once SERVING, stops it at exit."""
    process = start_server(address, Path(data_dir) / "d", *extra, log_path=Path(data_dir) / "server.log", env=env)
    try:
        yield process
    finally:
        stop_server(process)


def wait_serving(address: str, seconds: float = 180) -> None:
    """Wait until the server at `address` reports SERVING."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if health_status(address) == "SERVING":
            return
        time.sleep(0.2)
    raise SystemExit(f"the server at {address} did not report SERVING within {seconds} s")


def percentile_ms(samples_seconds: Sequence[float], q: float) -> float:
    """The q-th percentile of samples in seconds, in milliseconds; NaN for no samples."""
    if not samples_seconds:
        return float("nan")
    return float(np.percentile(np.asarray(samples_seconds, dtype=np.float64) * 1000, q))


def p50_ms(samples_seconds: Sequence[float]) -> float:
    return percentile_ms(samples_seconds, 50)


def metric(address: str, name: str) -> float:
    """The value of one sample (`name` with its labels, as in the exposition) at
    http://address/metrics; 0.0 when absent."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if values else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process `pid` has used, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_report(result: dict[str, Any], json_path: str | None) -> None:
    """Print `result` as JSON, and write it to json_path if one is given."""
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if json_path:
        Path(json_path).write_text(text + "\n")


def rss_anon_bytes(pid: int | None = None) -> int:
    """Anonymous resident memory of process `pid` (this one by default)."""
    for line in Path(f"/proc/{pid or os.getpid()}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/PID/status")


def interleaved(calls: dict[str, Callable[[int], object]], rounds: int = 12, block: int = 25) -> dict[str, list[float]]:
    """Seconds per call of each kind, run in alternating blocks (so drift of a noisy
    machine hits every kind alike); call(i) gets a fresh i."""
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


def embedder_batch_qps(embedder: Any, batch: list[str]) -> float:
    """Texts/s of the embedder on its own: the better of 32-text calls and one call for all."""
    started = time.perf_counter()
    for i in range(0, len(batch), 32):
        embedder.embed(batch[i:i + 32])
    in_32s = len(batch) / (time.perf_counter() - started)
    started = time.perf_counter()
    embedder.embed(batch)
    return max(in_32s, len(batch) / (time.perf_counter() - started))


@dataclasses.dataclass
class Rate:
    per_second: float
    client_cpu_ms: float  # per call, this process (the load generator)
    server_cpu_ms: float  # per call, the server process


def concurrent_rate(address: str, clients: int, seconds: float, work: Callable[[Any, int, int], object], server_pid: int) -> Rate:
    """Calls per second of `work(client, thread_index, i)` from `clients` threads, each with
    a `semcache_server.Client` of its own, and the CPU time each call cost this process and the server."""
    from semcache_server.client import Client

    counts = [0] * clients
    window = [0.0, 0.0]
    cpu = [0.0, 0.0]

    def open_window() -> None:
        cpu[:] = cpu_seconds(os.getpid()), cpu_seconds(server_pid)
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
    elapsed = time.perf_counter() - window[0]
    calls = max(1, sum(counts))
    return Rate(
        per_second=sum(counts) / elapsed,
        client_cpu_ms=1000 * (cpu_seconds(os.getpid()) - cpu[0]) / calls,
        server_cpu_ms=1000 * (cpu_seconds(server_pid) - cpu[1]) / calls,
    )


def derived_vectors(count: int, datasets_dir: Path, seed: int = 0, queries_per_set: int = 2000) -> np.ndarray:
    """`count` unit vectors that cluster like real traffic: the model's vectors of dev-set
    queries (queries_per_set of each intent set), each mixed with another and a little noise."""
    from semcache_server.bench import datasets
    from semcache_server.embedder import load_embedder

    queries: list[str] = []
    for name in ("banking77", "clinc150", "hwu64"):
        queries += [q.text for q in datasets.load_replay(datasets_dir / name / "dev.replay.jsonl", queries_per_set, seed)]
    base = load_embedder().embed(queries)
    rng = np.random.default_rng(seed)
    out = np.empty((count, base.shape[1]), dtype=np.float32)
    for start in range(0, count, 100_000):
        n = min(100_000, count - start)
        mix = base[rng.integers(0, len(base), n)] + 0.35 * base[rng.integers(0, len(base), n)]
        mix += 0.08 * rng.standard_normal(mix.shape).astype(np.float32)
        out[start:start + n] = mix / np.linalg.norm(mix, axis=1, keepdims=True)
    return out
