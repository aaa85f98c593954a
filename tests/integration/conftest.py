"""Fixtures of the integration tests: the real embedder, real servers on loopback, real
LMDB in temp dirs."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from semcache_server.client import Client
from semcache_server.embedder import Embedder, load_embedder
from semcache_server.server import SemcacheServer, create_server
from semcache_server.settings import Settings
from tests.helpers import POLICY_DIMENSION


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real default model on the default (ONNX) backend, loaded once for the whole run."""
    loaded = load_embedder()
    assert loaded.backend == "onnx"
    return loaded


ServerFactory = Callable[..., tuple[SemcacheServer, Client]]


def _empty_redis(backend: str) -> None:
    """Each test starts on an empty cluster, as it would on an empty data_dir."""
    from redis.cluster import RedisCluster

    from semcache_server.redis_backend.connection import connect, parse_backend

    client = connect(parse_backend(backend), 5.0)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    client.close()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start real servers on loopback port 0; each is stopped at the end of the test.

    make_server(embedder=None) runs without a model (clients send POLICY_DIMENSION vectors).
    Settings overrides are keyword arguments; data_dir defaults to one dir per test.
    """
    started: list[tuple[SemcacheServer, Client]] = []
    if os.environ.get("SEMCACHE_TEST_BACKEND"):
        _empty_redis(os.environ["SEMCACHE_TEST_BACKEND"])

    def factory(*, embedder: Embedder | None, clock: Callable[[], float] = time.time, **overrides: object):
        values: dict[str, object] = {
            "listen": "127.0.0.1:0",
            "data_dir": str(tmp_path / "data"),
            "embedding_dimension": POLICY_DIMENSION,
            "sync_writes": False,
            "verifier": "none",  # cosine alone, unless a test is about the verifier
        }
        if embedder is None:
            values["embedding_model"] = "none"
        if os.environ.get("SEMCACHE_TEST_BACKEND"):  # the suite against another backend (see tests/README)
            values["backend"] = os.environ["SEMCACHE_TEST_BACKEND"]
        values.update(overrides)
        settings = Settings().with_overrides(**{k: v for k, v in values.items() if k != "namespaces"})
        if "namespaces" in values:
            settings = dataclasses.replace(settings, namespaces=values["namespaces"])
        server, port = create_server(settings, embedder=embedder, clock=clock)
        client = Client(f"127.0.0.1:{port}", timeout_seconds=30)
        started.append((server, client))
        return server, client

    yield factory
    for server, client in started:
        client.close()
        server.stop(grace_seconds=1)
