"""The shared backend on a real Redis Cluster (Debian's redis-server on loopback ports:
3 primaries, 3 replicas), served by several real semcache frontends: in-process gRPC
servers, and `semcache serve` processes where a test kills one."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from semcache_server.bench.harness import stop_server
from semcache_server.client import Client
from semcache_server.errors import ConfigError
from semcache_server.partition import PartitionKey
from semcache_server.redis_backend.keys import PartitionKeys
from semcache_server.redis_backend.local_cluster import LocalCluster, ensure_redis_server, free_port_block
from semcache_server.server import create_server
from semcache_server.settings import Settings
from tests.helpers import POLICY_DIMENSION, free_port, start_server_process, status_of, unit_vector, vector_at_similarity

_names = itertools.count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("redis")) as started:
        yield started


@pytest.fixture
def ns() -> dict[str, str]:
    """A partition of its own per test: the cluster is shared by the module's tests."""
    return {"namespace": f"t{next(_names)}-{time.time_ns()}", "model": "m", "prompt_version": "v1"}


@pytest.fixture
def frontend(make_server, cluster):
    """frontend(**settings) -> a Client of a new in-process frontend on the cluster."""

    def start(**overrides: object) -> Client:
        return make_server(embedder=None, backend=cluster.url, **overrides)[1]

    return start


@pytest.fixture
def stale_frontend(make_server, cluster, monkeypatch):
    """stale_frontend(partition) -> a Client of a frontend whose replica of that partition
    (loaded now) never applies another change: what it serves comes from Redis' records."""

    def start(partition: dict[str, str]) -> Client:
        server, client = make_server(embedder=None, backend=cluster.url)
        key = PartitionKey(partition["namespace"], partition["model"], partition["prompt_version"])
        replica = server.cache.storage.partition(key)
        assert replica is not None
        monkeypatch.setattr(replica, "apply", lambda entries, client: True)
        return client

    return start


def _wait_for(predicate, timeout_seconds: float = 5.0) -> float:
    """Seconds until predicate() held; fails the test past the timeout."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_seconds, "condition not reached in time"
        time.sleep(0.005)
    return time.monotonic() - started


def test_a_store_on_one_frontend_is_an_exact_hit_on_another_at_once_and_a_semantic_hit_soon(frontend, ns):
    a, b = frontend(), frontend()
    base = unit_vector(1)
    assert not b.lookup(ns, "how do I return an item", embedding=base).hit  # b now holds the partition
    stored = a.store(ns, "how do I return an item", "Within 30 days.", embedding=base)
    exact = b.lookup(ns, "How do I return an item?", embedding=base)
    assert exact.hit and exact.exact and exact.entry_id == stored.entry_id
    near = vector_at_similarity(base, 0.97, seed=2)
    lag = _wait_for(lambda: b.lookup(ns, "what is your return policy", embedding=near).hit, timeout_seconds=2.0)
    hit = b.lookup(ns, "what is your return policy", embedding=near)
    assert hit.entry_id == stored.entry_id and hit.response == b"Within 30 days." and not hit.exact
    assert lag < 2.0
    # A frontend that never saw the partition loads it from Redis on first use.
    c = frontend()
    assert c.lookup(ns, "what is your return policy", embedding=near).entry_id == stored.entry_id


def test_without_change_notifications_the_interval_read_still_brings_a_store(make_server, cluster, frontend, ns):
    a = frontend()
    server, b = make_server(embedder=None, backend=cluster.url, redis_poll_interval_seconds=0.2)
    server.cache.storage._feed._listener.stop()  # as if every announcement were lost
    base = unit_vector(21)
    assert not b.lookup(ns, "first", embedding=base).hit
    a.store(ns, "first", "r", embedding=base)
    lag = _wait_for(lambda: b.lookup(ns, "in other words", embedding=vector_at_similarity(base, 0.97, 1)).hit)
    assert lag < 1.5


def test_a_namespace_threshold_set_on_one_frontend_holds_on_every_frontend(frontend, ns):
    a, b = frontend(), frontend()
    base = unit_vector(31)
    a.store(ns, "stored", "r", embedding=base)
    probe = vector_at_similarity(base, 0.95, 2)
    assert b.lookup(ns, "in other words", embedding=probe).hit  # 0.95 passes the default 0.92
    assert a.set_namespace_threshold(ns["namespace"], 0.97) == pytest.approx(0.97)
    _wait_for(lambda: not b.lookup(ns, "in other words", embedding=probe).hit, timeout_seconds=5.0)
    assert b.lookup(ns, "in other words", embedding=probe).threshold == pytest.approx(0.97)


def test_a_verdict_on_a_lookup_of_one_frontend_counts_once_on_any(frontend, ns):
    a, b = frontend(), frontend()
    base = unit_vector(32)
    a.store(ns, "stored", "r", embedding=base)
    near = vector_at_similarity(base, 0.95, 3)
    served = a.lookup(ns, "in other words", embedding=near)
    assert served.hit
    reply = b.feedback(ns, served.lookup_id, correct=False)  # b never saw this Lookup: the signed id says it
    assert reply.counted and reply.vetoed
    assert not a.feedback(ns, served.lookup_id, correct=False).counted  # claimed once, cluster-wide
    _wait_for(lambda: not a.lookup(ns, "in other words", embedding=near).hit, timeout_seconds=5.0)
    assert not b.lookup(ns, "in other words", embedding=near).hit


def test_partitions_stay_apart_across_frontends(frontend, ns):
    a, b = frontend(), frontend()
    vector = unit_vector(3)
    a.store(ns, "q", "v1 answer", embedding=vector)
    for other in ({**ns, "prompt_version": "v2"}, {**ns, "model": "m2"}, {**ns, "namespace": ns["namespace"] + "x"}):
        assert not b.lookup(other, "q", embedding=vector).hit


@pytest.mark.parametrize("scope", ["partition", "all_versions", "whole_namespace", "metadata"])
def test_an_invalidation_on_a_is_never_served_by_b_after_it_returned(frontend, stale_frontend, ns, scope):
    a = frontend()
    vectors = [unit_vector(10 + i) for i in range(5)]
    for i, vector in enumerate(vectors):
        a.store(ns, f"question {i}", f"answer {i}", embedding=vector, metadata={"doc": "d1"})
    kept = unit_vector(99)
    a.store(ns, "kept question", "kept", embedding=kept, metadata={"doc": "d2"})
    b = stale_frontend(ns)  # its replica never hears of the invalidation
    assert all(b.lookup(ns, f"question {i}", embedding=v).hit for i, v in enumerate(vectors))
    options = {
        "partition": {}, "all_versions": {"all_versions": True}, "whole_namespace": {"whole_namespace": True},
        "metadata": {"metadata_match": {"doc": "d1"}},
    }[scope]
    removed = a.invalidate(ns, **options)
    assert removed == (5 if scope == "metadata" else 6)
    for i, vector in enumerate(vectors):
        assert not b.lookup(ns, f"question {i}", embedding=vector).hit  # exact tier
        assert not b.lookup(ns, f"paraphrase {i}", embedding=vector_at_similarity(vector, 0.99, i)).hit
    assert b.lookup(ns, "kept question", embedding=kept).hit == (scope == "metadata")


def test_delete_on_a_is_a_miss_on_b(frontend, stale_frontend, ns):
    a = frontend()
    vector = unit_vector(5)
    entry = a.store(ns, "q", "r", embedding=vector).entry_id
    b = stale_frontend(ns)
    assert b.lookup(ns, "other words", embedding=vector).hit
    assert a.delete(ns, entry)
    assert not b.lookup(ns, "other words", embedding=vector).hit
    assert not a.delete(ns, entry)


def test_ttl_holds_on_every_frontend(frontend, ns):
    a, b = frontend(), frontend()
    vector = unit_vector(6)
    a.store(ns, "short lived", "r", embedding=vector, ttl_seconds=1)
    a.store(ns, "long lived", "r2", embedding=unit_vector(7))
    assert b.lookup(ns, "short lived", embedding=vector).hit
    time.sleep(1.3)
    assert not b.lookup(ns, "short lived", embedding=vector).hit
    assert not a.lookup(ns, "in other words", embedding=vector_at_similarity(vector, 0.99, 1)).hit
    assert b.lookup(ns, "long lived", embedding=unit_vector(7)).hit


def test_a_replaced_answer_is_served_everywhere(frontend, ns):
    a, b = frontend(), frontend()
    vector = unit_vector(8)
    first = a.store(ns, "q", "old", embedding=vector)
    second = b.store(ns, "q", "new", embedding=vector)
    assert second.replaced and second.entry_id != first.entry_id
    _wait_for(lambda: a.lookup(ns, "other words", embedding=vector).response == b"new")
    assert a.lookup(ns, "q", embedding=vector).response == b"new"


def test_stats_and_consistency_agree_across_frontends(frontend, ns, make_server, cluster):
    a, b = frontend(), frontend()
    for i in range(20):
        a.store(ns, f"q{i}", f"r{i}", embedding=unit_vector(100 + i), cost=0.5)
    assert b.lookup(ns, "q3", embedding=unit_vector(103)).hit
    assert not b.lookup(ns, "nothing like it", embedding=unit_vector(999)).hit
    b_stats = b.stats(ns)  # a frontend's own counters reach Redis before its Stats answers
    assert b_stats.entries == 20 and b_stats.partitions_total == 1
    assert b_stats.lookups == 2 and b_stats.hits == 1 and b_stats.saved_cost == pytest.approx(0.5)
    # Another frontend's, within stats_flush_interval_seconds.
    b.lookup(ns, "q4", embedding=unit_vector(104))
    _wait_for(lambda: a.stats(ns).lookups == 3, timeout_seconds=3.0)
    assert a.stats(ns).entries == 20
    server, _ = make_server(embedder=None, backend=cluster.url)
    _wait_for(lambda: server.cache.check_consistency() == [])


@pytest.mark.parametrize(("response_bytes", "count"), [(20000, 400), (100, 12000)])
def test_eviction_under_redis_maxmemory_never_fails_a_store_or_serves_a_wrong_answer(
    frontend, ns, cluster, response_bytes, count,
):
    """With short responses most of an entry is its vector and bookkeeping, which Redis
    cannot evict: they must be reclaimed as Redis evicts the records (reclaim.py)."""
    primaries = cluster.primaries()
    for port in primaries:
        cluster.cli(port, "CONFIG", "SET", "maxmemory", str(cluster.used_memory(port) + (3 << 20)))
    try:
        a = frontend()
        refused, ids = [], []
        for start in range(0, count, 200):
            reply = a.store_batch([
                {"partition": ns, "query": f"question {i}", "response": f"answer {i} ".encode() + b"x" * response_bytes,
                 "embedding": unit_vector(1000 + i)}
                for i in range(start, min(count, start + 200))
            ])
            refused += [r.error_message for r in reply.results if r.error_code]
            ids += [r.stored.entry_id for r in reply.results]
        assert refused == []
        served = [a.lookup(ns, f"question {i}", embedding=unit_vector(1000 + i)) for i in range(0, count, max(1, count // 400))]
        assert any(not r.hit for r in served)  # Redis evicted some
        for i, r in zip(range(0, count, max(1, count // 400)), served, strict=True):
            assert not r.hit or (r.entry_id == ids[i] and r.response.startswith(f"answer {i} ".encode()))
    finally:
        for port in primaries:
            cluster.cli(port, "CONFIG", "SET", "maxmemory", "0")
    _wait_for(lambda: a.stats(ns).evictions > 0, timeout_seconds=5.0)  # counted as the reclaimer finds them
    assert a.stats(ns).entries < count


def test_an_eviction_policy_that_would_refuse_stores_or_evict_structures_is_named_at_start(
    frontend, cluster, caplog,
):
    primaries = cluster.primaries()
    try:
        for port in primaries:
            cluster.cli(port, "CONFIG", "SET", "maxmemory-policy", "noeviction")
        cluster.cli(primaries[0], "CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
        with caplog.at_level("WARNING", logger="semcache"):
            frontend()
        assert "noeviction" in caplog.text and "allkeys-lru" in caplog.text
        caplog.clear()
        for port in primaries:
            cluster.cli(port, "CONFIG", "SET", "maxmemory-policy", "volatile-lfu")
        with caplog.at_level("WARNING", logger="semcache"):
            frontend()
        assert "maxmemory-policy" not in caplog.text
    finally:
        for port in primaries:
            cluster.cli(port, "CONFIG", "SET", "maxmemory-policy", "volatile-lfu")


def test_bad_configuration_is_a_clear_error_at_start(tmp_path):
    base = Settings(embedding_model="none", embedding_dimension=POLICY_DIMENSION, data_dir=str(tmp_path / "d"))
    nobody = free_port()
    with pytest.raises(ConfigError, match="cannot reach Redis"):
        create_server(base.with_overrides(backend=f"redis://127.0.0.1:{nobody}", listen="127.0.0.1:0"))
    server = ensure_redis_server()
    port = free_port_block(1, start=21000)
    plain = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--requirepass", "s3cret"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        with pytest.raises(ConfigError, match="refused the credentials"):
            create_server(base.with_overrides(backend=f"redis://:wrong@127.0.0.1:{port}", listen="127.0.0.1:0"))
        with pytest.raises(ConfigError, match="not in cluster mode"):
            create_server(base.with_overrides(backend=f"redis://:s3cret@127.0.0.1:{port}", listen="127.0.0.1:0"))
        # The command line: exit status 2, one line naming the problem, no traceback.
        done = subprocess.run(
            [sys.executable, "-m", "semcache_server", "serve", "--listen", "127.0.0.1:0", "--embedding-model", "none",
             "--embedding-dimension", "16", "--data-dir", str(tmp_path / "d2"), "--backend", f"redis://:s3cret@127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert "not in cluster mode" in done.stderr and "Traceback" not in done.stderr
        assert "s3cret" not in done.stderr
    finally:
        plain.terminate()
        plain.wait()
    with pytest.raises(ConfigError, match="budgets are not used"):
        base.with_overrides(backend="redis://127.0.0.1:1", max_entries=10)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        base.with_overrides(backend="redis://nohost")


def _serve_frontend(tmp_path: Path, url: str, *extra: str) -> tuple[subprocess.Popen, Client]:
    port = free_port()
    data = tmp_path / f"frontend-{port}"
    process = start_server_process(
        data, port, "--backend", url, "--embedding-model", "none", "--embedding-dimension", str(POLICY_DIMENSION),
        "--verifier", "none", *extra,
    )
    return process, Client(f"127.0.0.1:{port}", timeout_seconds=10)


def test_kill_9_of_a_frontend_under_load_loses_no_acknowledged_store(tmp_path, cluster, ns):
    process, client = _serve_frontend(tmp_path, cluster.url)
    acknowledged: list[tuple[int, str]] = []
    stop = threading.Event()

    def load(first: int) -> None:
        for i in itertools.count(first):
            if stop.is_set():
                return
            try:
                reply = client.store(ns, f"load {i}", f"answer {i}", embedding=unit_vector(5000 + i))
            except grpc.RpcError:
                return  # the frontend is gone: this Store was never acknowledged
            acknowledged.append((i, reply.entry_id))

    writers = [threading.Thread(target=load, args=(w * 100_000,)) for w in range(2)]
    for writer in writers:
        writer.start()
    time.sleep(1.5)
    process.kill()
    process.wait()
    stop.set()
    for writer in writers:
        writer.join(timeout=30)
    client.close()
    assert len(acknowledged) > 20
    replacement, other = _serve_frontend(tmp_path, cluster.url)
    try:
        lost = [
            i for i, entry in acknowledged if other.lookup(ns, f"load {i}", embedding=unit_vector(5000 + i)).entry_id != entry
        ]
        assert lost == []
    finally:
        other.close()
        stop_server(replacement)


def test_a_primary_failover_keeps_frontends_serving_without_losing_replicated_stores(tmp_path, make_server):
    with LocalCluster(tmp_path / "failover", node_timeout_ms=1000) as cluster:
        client = make_server(embedder=None, backend=cluster.url, redis_wait_replicas=1)[1]
        ns = {"namespace": "failover", "model": "m", "prompt_version": "v1"}
        stored = {i: client.store(ns, f"q{i}", f"r{i}", embedding=unit_vector(i)).entry_id for i in range(50)}
        key = PartitionKey(ns["namespace"], ns["model"], ns["prompt_version"])
        owner = cluster.primary_for(PartitionKeys.of(key).tag)  # the primary holding the partition
        cluster.kill(owner)
        codes, started = set(), time.monotonic()
        while time.monotonic() - started < 30:
            try:
                if client.lookup(ns, "q0", embedding=unit_vector(0)).hit:
                    break
            except grpc.RpcError as e:
                codes.add(e.code())
            time.sleep(0.1)
        else:
            pytest.fail("the frontend did not serve again after the failover")
        assert codes <= {grpc.StatusCode.UNAVAILABLE}, codes
        lost = [i for i, entry in stored.items() if client.lookup(ns, f"q{i}", embedding=unit_vector(i)).entry_id != entry]
        assert lost == []
        # The new primary has no replica yet: a Store that needs one is refused, not half-acknowledged.
        refused = status_of(lambda: client.store(ns, "after", "failover", embedding=unit_vector(77)))
        assert refused == grpc.StatusCode.UNAVAILABLE
        cluster.start_node(owner)  # the old primary comes back as the new one's replica
        cluster.wait_ok()
        assert client.store(ns, "after", "failover", embedding=unit_vector(77)).entry_id


def test_redis_down_is_unavailable_per_call_and_the_frontend_recovers(tmp_path, make_server):
    with LocalCluster(tmp_path / "down", replicas=0) as cluster:
        client = make_server(embedder=None, backend=cluster.url, redis_timeout_seconds=0.5)[1]
        ns = {"namespace": "down", "model": "m", "prompt_version": "v1"}
        client.store(ns, "q", "r", embedding=unit_vector(1))
        for port in cluster.ports:
            cluster.kill(port)
        assert status_of(lambda: client.lookup(ns, "q", embedding=unit_vector(1))) == grpc.StatusCode.UNAVAILABLE
        assert status_of(lambda: client.store(ns, "q2", "r", embedding=unit_vector(2))) == grpc.StatusCode.UNAVAILABLE
        for port in cluster.ports:
            cluster.start_node(port)
        cluster.wait_ok()
        _wait_for(lambda: _hit_or_none(client, ns), timeout_seconds=30)
        assert client.lookup(ns, "q", embedding=unit_vector(1)).response == b"r"  # AOF brought it back


def _hit_or_none(client: Client, ns: dict[str, str]) -> bool:
    try:
        return client.lookup(ns, "q", embedding=unit_vector(1)).hit
    except grpc.RpcError:
        return False


def test_an_alias_of_a_miss_made_on_another_frontend(frontend, ns):
    """b never saw the missed Lookup: the Feedback sends it again, and b checks it against
    the question digest signed in the id before storing the alias cluster-wide."""
    a, b = frontend(), frontend()
    base = unit_vector(33)
    stored = a.store(ns, "how do I get a refund", "30 days", embedding=base)
    far = vector_at_similarity(base, 0.5, 4)
    missed = a.lookup(ns, "money back?", embedding=far)
    assert not missed.hit
    reply = b.feedback(ns, missed.lookup_id, True, should_match_entry_id=stored.entry_id, query="money back?", embedding=far)
    assert reply.counted and reply.alias_entry_id
    _wait_for(lambda: a.lookup(ns, "money back?", embedding=far).hit, timeout_seconds=5.0)
    assert a.lookup(ns, "money back?", embedding=far).response == b"30 days"
