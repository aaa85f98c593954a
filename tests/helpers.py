"""Helpers shared by the unit and integration tests (fixtures live in the conftest files)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from semcache_server.bench.harness import free_port, health_status, start_server

__all__ = [
    "POLICY_DIMENSION", "REPO", "ManualClock", "fill_map", "free_port", "health_status", "start_server_process",
    "status_of", "unit_vector", "vector_at_similarity",
]

REPO = Path(__file__).resolve().parent.parent
# Dimension of the client-supplied vectors in policy tests (no model loaded).
POLICY_DIMENSION = 16


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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


def fill_map(store) -> int:  # type: ignore[no-untyped-def]
    """Fill an LMDB store's map for real: filler meta records, one transaction each, until
    LMDB refuses. Returns how many went in."""
    from semcache_server.errors import StorageFullError

    filled = 0
    while True:
        try:
            with store.write() as txn:
                store.put_meta(txn, f"filler-{filled}", "f" * 8000)
        except StorageFullError:
            return filled
        filled += 1


def status_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def start_server_process(data_dir: Path, port: int, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`semcache serve` in a child process; returns once health says SERVING.

    Its log goes to data_dir/../server-PORT.log.
    """
    try:
        return start_server(
            f"127.0.0.1:{port}", data_dir, *extra, log_path=data_dir.parent / f"server-{port}.log", env=env,
            serving_within_seconds=120,
        )
    except RuntimeError as e:
        raise AssertionError(str(e)) from None
