"""Overload: calls past grpc_workers are refused at once, health still answers, and the
model never runs for a caller whose deadline has passed.

The real model sits behind a gate the test opens, so calls pile up in the server
exactly as they do when more arrive than the model can embed.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from semcache_server.embedder import check_deadline
from semcache_server.errors import DeadlineExceededError
from semcache_server.v1 import semcache_pb2 as pb
from tests.helpers import status_of

PARTITION = {"namespace": "busy", "model": "m"}


class GatedEmbedder:
    """The real model, run only once the test opens the gate; one call at a time, so
    whatever arrives while a call waits queues in the server's batcher."""

    backend = "test"
    parallel_calls = 1

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.name, self.dimension = inner, inner.name, inner.dimension
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.texts: list[str] = []

    def embed(self, texts, deadline=None):  # type: ignore[no-untyped-def]
        check_deadline(deadline)
        self.texts.extend(texts)
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        return self.inner.embed(texts)

    def embed_on_one_core(self, texts):  # type: ignore[no-untyped-def]
        return self.embed(texts)


def _seed(client, embedder) -> None:  # type: ignore[no-untyped-def]
    """One entry with a client vector (no model call), so Lookups of new texts need the model."""
    vector = embedder.embed(["where is my parcel"])[0].tolist()
    client.store(PARTITION, "where is my parcel", "tracking page", embedding=vector)


def _wait_for(condition, seconds: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.01)


def _shed(server, reason: str) -> float:  # type: ignore[no-untyped-def]
    return server.metrics.registry.get_sample_value("semcache_requests_shed_total", {"reason": reason}) or 0.0


def test_calls_past_grpc_workers_are_refused_at_once_and_health_still_answers(make_server, embedder):
    gated = GatedEmbedder(embedder)
    server, client = make_server(embedder=gated, grpc_workers=3)
    _seed(client, embedder)
    in_model = [client._stub.Lookup.future(_lookup_request(f"how do I return item {i}")) for i in range(3)]
    _wait_for(lambda: server.admission.in_progress == 3 and gated.entered.is_set())

    # A fourth cache call of any kind is refused at once: it does not wait for the gate
    # (it would, and then fail with DEADLINE_EXCEEDED, if it queued).
    started = time.monotonic()
    assert status_of(lambda: client._stub.Lookup(_lookup_request("one more"), timeout=20)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    exact = embedder.embed(["where is my parcel"])[0].tolist()
    assert status_of(lambda: client.store(PARTITION, "x", "y", embedding=exact)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    # get_or_compute takes a refusal for a miss: the application gets compute()'s value.
    assert client.get_or_compute(PARTITION, "one more", lambda: "computed") == "computed"
    assert time.monotonic() - started < 15
    assert _shed(server, "overloaded") == 4  # get_or_compute's Lookup and Store were refused too
    # Health probes have threads of their own: a liveness probe passes while the model is saturated.
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=20)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    gated.gate.set()
    assert all(not f.result(timeout=60).hit for f in in_model)  # none was dropped
    assert server.admission.in_progress == 0
    assert client.lookup(PARTITION, "where is my parcel").hit  # room again once they finished


def test_the_model_never_runs_for_a_caller_whose_deadline_passed_while_it_waited(make_server, embedder):
    gated = GatedEmbedder(embedder)
    server, client = make_server(embedder=gated)
    _seed(client, embedder)
    entries_before = client.stats().entries
    first = client._stub.Lookup.future(_lookup_request("the call that holds the model"))
    assert gated.entered.wait(30)

    # Two callers queue behind it and give up: a Lookup and a Store that needs an embedding.
    assert status_of(lambda: client._stub.Lookup(_lookup_request("a lookup that gives up"), timeout=0.5)) == (
        grpc.StatusCode.DEADLINE_EXCEEDED
    )
    store = client._stub.Store.future(_store_request("a store that gives up"), timeout=0.5)
    assert store.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    gated.gate.set()
    assert not first.result(timeout=60).hit

    # The server answered both without embedding their texts, and stored nothing.
    _wait_for(lambda: server.admission.in_progress == 0)
    assert gated.texts == ["the call that holds the model"]
    assert _shed(server, "deadline") == 2
    assert client.stats().entries == entries_before
    assert client.lookup(PARTITION, "Where is my parcel?").hit


def test_a_call_whose_deadline_has_passed_never_reaches_the_model(embedder):
    with pytest.raises(DeadlineExceededError):
        embedder.embed(["too late"], time.monotonic() - 1)
    assert embedder.embed(["in time"], time.monotonic() + 60).shape == (1, embedder.dimension)
    assert np.isclose(np.linalg.norm(embedder.embed(["no deadline"])[0]), 1.0, atol=1e-5)


def _lookup_request(query: str) -> pb.LookupRequest:
    return pb.LookupRequest(partition=pb.Partition(**PARTITION), query=query)


def _store_request(query: str) -> pb.StoreRequest:
    return pb.StoreRequest(partition=pb.Partition(**PARTITION), query=query, response=b"answer")
