"""Coalesced misses over gRPC: concurrent misses of one question compute once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from semcache_server.client import Client
from semcache_server.settings import NamespaceSettings
from tests.helpers import unit_vector, vector_at_similarity

APP = {"namespace": "app", "model": "gpt-x"}


class CountingLLM:
    def __init__(self, seconds: float = 0.5, fail_first: int = 0) -> None:
        self.calls = 0
        self.seconds = seconds
        self.fail_first = fail_first
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            self.calls += 1
            call = self.calls
        time.sleep(self.seconds)
        if call <= self.fail_first:
            raise RuntimeError("the LLM failed")
        return f"answer {call}"


def _concurrently(count: int, call):
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(call, i) for i in range(count)]
        return [f.exception() or f.result() for f in futures]


def test_32_concurrent_identical_misses_compute_once(make_server):
    server, client = make_server(embedder=None)
    address = f"127.0.0.1:{server.port}"
    llm = CountingLLM()
    vector = unit_vector(1)
    clients = [Client(address) for _ in range(32)]
    try:
        results = _concurrently(32, lambda i: clients[i].get_or_compute(APP, "What is the refund policy?", llm, embedding=vector))
    finally:
        for c in clients:
            c.close()
    assert llm.calls == 1
    assert results == ["answer 1"] * 32
    stats = client.stats()
    assert stats.lookups == 32 and stats.hits == 31 and stats.misses == 1
    assert stats.entries == 1


def test_coalesced_answers_say_so_and_how_long_they_waited(make_server):
    _, client = make_server(embedder=None)
    vector = unit_vector(2)
    holder = client.lookup(APP, "q", embedding=vector, lease=True)
    assert not holder.hit and holder.lease_id

    def store_later() -> None:
        time.sleep(0.3)
        client.store(APP, "q", "the answer", embedding=vector, lease_id=holder.lease_id)

    storer = threading.Thread(target=store_later)
    storer.start()
    waiter = client.lookup(APP, "q", embedding=vector, lease=True)
    storer.join()
    assert waiter.hit and waiter.coalesced and waiter.response == b"the answer"
    assert 200 <= waiter.waited_ms <= 5000
    plain = client.lookup(APP, "q", embedding=vector)
    assert plain.hit and not plain.coalesced


def test_a_failed_compute_releases_the_lease_and_a_waiter_takes_over(make_server):
    server, _ = make_server(embedder=None)
    address = f"127.0.0.1:{server.port}"
    llm = CountingLLM(seconds=0.3, fail_first=1)
    vector = unit_vector(3)
    clients = [Client(address) for _ in range(4)]
    try:
        results = _concurrently(4, lambda i: clients[i].get_or_compute(APP, "q", llm, embedding=vector))
    finally:
        for c in clients:
            c.close()
    failures = [r for r in results if isinstance(r, RuntimeError)]
    assert len(failures) == 1 and llm.calls == 2  # the next leaseholder computed; the rest were answered
    assert sorted(r for r in results if isinstance(r, str)) == ["answer 2"] * 3


def test_a_lease_whose_holder_never_stores_expires(make_server):
    _, client = make_server(embedder=None, lease_seconds=0.5)
    vector = unit_vector(4)
    first = client.lookup(APP, "q", embedding=vector, lease=True)
    assert first.lease_id
    started = time.monotonic()
    second = client.lookup(APP, "q", embedding=vector, lease=True)  # waits for the expiry, then holds it
    assert not second.hit and second.lease_id and second.lease_id != first.lease_id
    assert 0.3 <= time.monotonic() - started < 5
    assert not client.release_lease(APP, first.lease_id)
    assert client.release_lease(APP, second.lease_id)


def test_the_wait_is_bounded_by_lease_wait_ms(make_server):
    _, client = make_server(embedder=None)
    vector = unit_vector(5)
    assert client.lookup(APP, "q", embedding=vector, lease=True).lease_id
    started = time.monotonic()
    found = client.lookup(APP, "q", embedding=vector, lease=True, lease_wait_ms=200)
    assert not found.hit and not found.lease_id  # gave up waiting: the caller computes, as without a lease
    assert 0.15 <= time.monotonic() - started < 3


@pytest.mark.parametrize("mode, joins", [("semantic", True), ("exact", False)])
def test_semantic_coalescing_joins_a_paraphrase(make_server, mode, joins):
    _, client = make_server(embedder=None, min_similarity=0.9, namespaces={"app": NamespaceSettings(coalesce=mode)})
    vector = unit_vector(6)
    holder = client.lookup(APP, "refund policy", embedding=vector, lease=True)
    paraphrase = vector_at_similarity(vector, 0.95, seed=7)

    def store_later() -> None:
        time.sleep(0.3)
        client.store(APP, "refund policy", "30 days", embedding=vector, lease_id=holder.lease_id)

    storer = threading.Thread(target=store_later)
    storer.start()
    found = client.lookup(APP, "what's the refund policy?", embedding=paraphrase, lease=True)
    storer.join()
    assert found.hit == joins
    assert bool(found.lease_id) != joins


def test_leases_do_not_cross_keys_or_partitions(make_server):
    _, client = make_server(embedder=None)
    vector = unit_vector(8)
    assert client.lookup(APP, "q", embedding=vector, lease=True, key={"settings": {"temperature": 0}}).lease_id
    other_key = client.lookup(APP, "q", embedding=vector, lease=True, key={"settings": {"temperature": 1}}, lease_wait_ms=5000)
    assert other_key.lease_id  # not made to wait
    other_partition = client.lookup({"namespace": "other"}, "q", embedding=vector, lease=True, lease_wait_ms=5000)
    assert other_partition.lease_id
