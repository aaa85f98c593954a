"""Shared fixtures: a real embedder, real servers on loopback, real LMDB in temp dirs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from semcache.client import Client
from semcache.embedder import Embedder, load_embedder
from semcache.server import SemcacheServer, create_server
from semcache.settings import Settings

REPO = Path(__file__).resolve().parent.parent
# Dimension of the client-supplied vectors in policy tests (no model loaded).
POLICY_DIMENSION = 16


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real default model on the default (ONNX) backend, loaded once for the whole run."""
    loaded = load_embedder()
    assert loaded.backend == "onnx"
    return loaded


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


ServerFactory = Callable[..., tuple[SemcacheServer, Client]]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start real servers on loopback port 0; each is stopped at the end of the test.

    make_server(embedder=None) runs without a model (clients send POLICY_DIMENSION vectors).
    Settings overrides are keyword arguments; data_dir defaults to one dir per test.
    """
    started: list[tuple[SemcacheServer, Client]] = []

    def factory(*, embedder: Embedder | None, clock: Callable[[], float] = time.time, **overrides: object):
        values: dict[str, object] = {
            "listen": "127.0.0.1:0",
            "data_dir": str(tmp_path / "data"),
            "embedding_dimension": POLICY_DIMENSION,
            "sync_writes": False,
        }
        if embedder is None:
            values["embedding_model"] = "none"
        values.update(overrides)
        settings = Settings().with_overrides(**{k: v for k, v in values.items() if k != "namespaces"})
        if "namespaces" in values:
            import dataclasses

            settings = dataclasses.replace(settings, namespaces=values["namespaces"])
        server, port = create_server(settings, embedder=embedder, clock=clock)
        client = Client(f"127.0.0.1:{port}", timeout_seconds=30)
        started.append((server, client))
        return server, client

    yield factory
    for server, client in started:
        client.close()
        server.stop(grace_seconds=1)


def unit_vector(seed: int, dimension: int = POLICY_DIMENSION) -> list[float]:
    vector = np.random.default_rng(seed).standard_normal(dimension)
    return list(vector / np.linalg.norm(vector))


def vector_at_similarity(base: list[float], similarity: float, seed: int) -> list[float]:
    """A unit vector whose cosine with `base` is exactly `similarity`."""
    b = np.asarray(base, dtype=np.float64)
    noise = np.random.default_rng(seed).standard_normal(b.size)
    noise -= noise.dot(b) * b
    noise /= np.linalg.norm(noise)
    return list(similarity * b + np.sqrt(1 - similarity**2) * noise)


def status_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server_process(data_dir: Path, port: int, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`semcache serve` in a child process; returns once health says SERVING.

    Its log goes to data_dir/../server-PORT.log (a pipe could fill and block the server).
    """
    log_path = data_dir.parent / f"server-{port}.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "semcache", "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir), *extra],
            env={**os.environ, **(env or {})},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        if health_status(f"127.0.0.1:{port}") == "SERVING":
            return process
        time.sleep(0.2)
    process.kill()
    process.wait()
    raise AssertionError("server did not become healthy in 120 s")


def health_status(address: str) -> str:
    """The server's overall health status name, or the gRPC error code name."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError as e:
            return e.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
