"""Helpers shared by the bench scripts and the tests: free loopback ports, `semcache
serve` in a child process, health, percentiles and JSON reports.

Nothing here reaches into the engine: scripts measure through the gRPC API, the
metrics endpoint, or the public classes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
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
    serving_within_seconds: float = 180,
) -> subprocess.Popen:
    """`semcache serve --listen address --data-dir data_dir` in a child process, its output
    appended to log_path (a pipe could fill and block it); returns once health says
    SERVING. Raises RuntimeError, with the log's tail, if it exits or never does."""
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "semcache", "serve", "--listen", address, "--data-dir", str(data_dir), *extra],
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
