"""TTL, invalidation, version retirement and LFU eviction, over gRPC with a hand-moved clock."""

from __future__ import annotations

import subprocess

import grpc
import pytest

from semcache_server.settings import NamespaceSettings
from tests.helpers import status_of, unit_vector, vector_at_similarity

P = {"namespace": "app", "model": "m", "prompt_version": "v1"}
DAY = 86400


@pytest.fixture
def policy_server(make_server, clock):
    """A factory for model-less servers on the test's clock, sharing one data dir (for restarts)."""

    def start(**overrides):
        return make_server(embedder=None, clock=clock, **overrides)

    return start


def store(client, i, partition=P, **kwargs):
    return client.store(partition, f"question {i}", f"answer {i}", embedding=unit_vector(i), **kwargs)


def assert_consistent(server):
    assert server.cache.check_consistency() == []


# -- TTL -------------------------------------------------------------------------


def test_ttl_hits_at_once_and_misses_after_expiry_even_before_a_sweep(policy_server, clock):
    server, client = policy_server()
    store(client, 1, ttl_seconds=1)
    store(client, 2)  # no TTL
    assert client.lookup(P, "question 1").hit
    assert client.lookup(P, "", embedding=unit_vector(1)).hit
    clock.advance(0.999)
    assert client.lookup(P, "question 1").hit
    clock.advance(0.002)
    assert not client.lookup(P, "question 1").hit  # exact tier
    assert not client.lookup(P, "", embedding=unit_vector(1)).hit  # semantic tier
    assert client.stats().entries == 2  # not swept yet, and still never served
    assert server.cache.sweep_expired() == 1
    stats = client.stats()
    assert (stats.entries, stats.expirations) == (1, 1)
    assert client.lookup(P, "question 2").hit
    assert_consistent(server)
    server.stop()
    server, client = policy_server()
    assert client.stats().entries == 1 and not client.lookup(P, "question 1").hit
    assert client.stats().expirations == 1


def test_expired_best_match_does_not_hide_a_live_one_below_it(policy_server, clock):
    _server, client = policy_server()
    base = unit_vector(50)
    for i in range(20):  # twenty expiring near-duplicates closer to the probe than the live entry
        client.store(P, f"dup {i}", "old", embedding=vector_at_similarity(base, 0.99, seed=i), ttl_seconds=5)
    live = client.store(P, "live", "live answer", embedding=vector_at_similarity(base, 0.95, seed=99))
    clock.advance(10)
    result = client.lookup(P, "", embedding=base, min_similarity=0.9)
    assert result.hit and result.entry_id == live.entry_id


def test_default_ttl_from_settings_and_namespace(policy_server, clock):
    _server, client = policy_server(
        default_ttl_seconds=100,
        namespaces={"short": NamespaceSettings(default_ttl_seconds=10), "forever": NamespaceSettings(default_ttl_seconds=0)},
    )
    short, forever = {"namespace": "short"}, {"namespace": "forever"}
    assert store(client, 1).expires_at == pytest.approx(clock.now + 100)
    assert store(client, 2, partition=short).expires_at == pytest.approx(clock.now + 10)
    assert store(client, 3, partition=short, ttl_seconds=50).expires_at == pytest.approx(clock.now + 50)
    assert store(client, 4, partition=forever).expires_at == 0
    clock.advance(11)
    assert not client.lookup(short, "question 2").hit
    assert client.lookup(short, "question 3").hit and client.lookup(P, "question 1").hit
    clock.advance(10 * DAY)
    assert client.lookup(forever, "question 4").hit


def test_sliding_ttl_refreshes_on_hit_and_survives_restart(policy_server, clock):
    namespaces = {"sliding": NamespaceSettings(sliding_ttl=True)}
    server, client = policy_server(namespaces=namespaces)
    sliding = {"namespace": "sliding"}
    store(client, 1, partition=sliding, ttl_seconds=10)
    store(client, 2, ttl_seconds=10)  # namespace without sliding TTL
    for _ in range(3):
        clock.advance(8)
        assert client.lookup(sliding, "question 1").hit
    assert not client.lookup(P, "question 2").hit
    assert server.cache.sweep_expired() == 1  # only the non-sliding one
    server.stop()
    server, client = policy_server(namespaces=namespaces)
    clock.advance(8)
    assert client.lookup(sliding, "question 1").hit
    clock.advance(10.5)
    assert not client.lookup(sliding, "question 1").hit


# -- invalidation ------------------------------------------------------------------


def test_invalidate_scopes_and_metadata_match(policy_server):
    server, client = policy_server(max_versions_per_model=0)
    layout = {
        ("a", "m", "v1"): [{"doc": "d1"}, {"doc": "d2"}, {"doc": "d1", "lang": "en"}],
        ("a", "m", "v2"): [{"doc": "d1"}, {}],
        ("a", "n", "v1"): [{"doc": "d1"}],
        ("b", "m", "v1"): [{"doc": "d1"}, {"doc": "d1"}],
    }
    seed = 0
    for (ns, model, version), metadatas in layout.items():
        for metadata in metadatas:
            seed += 1
            client.store({"namespace": ns, "model": model, "prompt_version": version}, f"q{seed}", "a",
                         embedding=unit_vector(seed), metadata=metadata)
    a_m_v1 = {"namespace": "a", "model": "m", "prompt_version": "v1"}
    assert client.invalidate(a_m_v1, metadata_match={"doc": "d1", "lang": "en"}) == 1
    assert client.invalidate(a_m_v1, all_versions=True, metadata_match={"doc": "d1"}) == 2
    assert client.stats({"namespace": "a"}).entries == 3  # d2, the untagged one, a/n
    assert client.invalidate({"namespace": "a"}, whole_namespace=True, metadata_match={"doc": "d1"}) == 1
    assert client.stats().entries == 4
    assert client.invalidate({"namespace": "a"}, whole_namespace=True) == 2
    assert client.stats({"namespace": "a"}).partitions == []
    assert client.stats().entries == 2 and client.stats().invalidations == 6
    assert_consistent(server)
    server.stop()
    server, client = policy_server(max_versions_per_model=0)
    assert client.stats().entries == 2
    assert [p.namespace for p in client.stats().partitions] == ["b"]
    assert_consistent(server)


def test_all_versions_removes_every_version_and_nothing_else(policy_server):
    server, client = policy_server(max_versions_per_model=0)
    for i, version in enumerate(["v1", "v2", "v3"]):
        store(client, i, partition={**P, "prompt_version": version})
    store(client, 10, partition={**P, "model": "other"})
    store(client, 11, partition={**P, "namespace": "other"})
    assert client.invalidate(P, all_versions=True) == 3
    server.stop()
    server, client = policy_server(max_versions_per_model=0)
    assert sorted((p.namespace, p.model) for p in client.stats().partitions) == [("app", "other"), ("other", "m")]
    assert client.lookup({**P, "model": "other"}, "question 10").hit


def test_new_prompt_version_retires_the_least_recently_used_ones(policy_server, clock):
    server, client = policy_server(max_versions_per_model=2)
    versions = {v: {**P, "prompt_version": v} for v in ("v1", "v2", "v3")}
    store(client, 1, partition=versions["v1"])
    clock.advance(1)
    store(client, 2, partition=versions["v2"])
    clock.advance(1)
    assert client.lookup(versions["v1"], "question 1").hit  # v1 is now used more recently than v2
    clock.advance(1)
    store(client, 3, partition=versions["v3"])
    server.cache.wait_for_purges()
    assert sorted(p.prompt_version for p in client.stats().partitions) == ["v1", "v3"]
    assert not client.lookup(versions["v2"], "question 2").hit
    assert client.stats().invalidations == 1
    assert_consistent(server)
    server.stop()
    server, client = policy_server(max_versions_per_model=2)
    assert sorted(p.prompt_version for p in client.stats().partitions) == ["v1", "v3"]
    assert client.lookup(versions["v1"], "question 1").hit


# -- eviction -----------------------------------------------------------------------


def test_max_entries_keeps_exactly_the_budget_including_every_hot_entry(policy_server, clock):
    server, client = policy_server(max_entries=100)
    hot = [store(client, i).entry_id for i in range(20)]
    for _ in range(5):
        for i in range(20):
            clock.advance(1)
            assert client.lookup(P, f"question {i}").hit
    for i in range(20, 150):
        clock.advance(1)
        store(client, i)
    stats = client.stats()
    assert (stats.entries, stats.evictions) == (100, 50)
    for i, entry_id in enumerate(hot):
        assert client.lookup(P, f"question {i}").entry_id == entry_id
    evicted = [i for i in range(20, 150) if not client.lookup(P, f"question {i}").hit]
    assert evicted == list(range(20, 70))  # the oldest cold ones
    assert_consistent(server)
    server.stop()
    server, client = policy_server(max_entries=100)
    assert client.stats().entries == 100
    assert all(client.lookup(P, f"question {i}").entry_id == hot[i] for i in range(20))
    store(client, 500)  # the restored LFU state still protects the hot entries
    assert all(client.lookup(P, f"question {i}").hit for i in range(20))


@pytest.mark.parametrize("idle_days", [0, 60])
def test_aging_lets_a_formerly_hot_now_idle_entry_be_evicted(policy_server, clock, idle_days):
    _server, client = policy_server(max_entries=10, lfu_half_life_seconds=DAY)
    hot = store(client, 0).entry_id
    for _ in range(30):
        assert client.lookup(P, "question 0").hit
    clock.advance(idle_days * DAY)
    for i in range(1, 11):  # the 11th entry forces one eviction
        clock.advance(60)
        store(client, i)
    hot_still_there = client.lookup(P, "question 0").entry_id == hot
    assert hot_still_there == (idle_days == 0)
    assert client.stats().entries == 10


def test_namespace_budget_protects_other_tenants(policy_server):
    _server, client = policy_server(max_entries=1000, namespaces={"noisy": NamespaceSettings(max_entries=5)})
    quiet, noisy = {"namespace": "quiet"}, {"namespace": "noisy"}
    for i in range(3):
        store(client, i, partition=quiet)
    for i in range(100, 140):
        store(client, i, partition=noisy)
    assert client.stats(noisy).entries == 5
    assert client.stats(quiet).entries == 3


def test_byte_budget_and_an_entry_larger_than_it(policy_server):
    server, client = policy_server(max_bytes=20_000)
    for i in range(30):
        client.store(P, f"q{i}", b"x" * 1000, embedding=unit_vector(i))
    stats = client.stats()
    assert stats.bytes <= 20_000 and stats.entries < 30 and stats.evictions == 30 - stats.entries
    code = status_of(lambda: client.store(P, "huge", b"x" * 30_000, embedding=unit_vector(99)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.stats().entries == stats.entries
    assert_consistent(server)


def test_lmdb_map_ceiling_evicts_then_refuses_and_never_corrupts(policy_server):
    settings = dict(max_map_bytes=2 << 20, max_response_bytes=3 << 20, max_message_bytes=4 << 20)
    server, client = policy_server(**settings)
    for i in range(60):  # ~6 MB of responses into a 2 MiB map
        client.store(P, f"q{i}", bytes([i]) * 100_000, embedding=unit_vector(i))
    stats = client.stats()
    assert 0 < stats.entries < 60 and stats.evictions > 0
    assert client.lookup(P, "q59").response == bytes([59]) * 100_000
    before = client.stats()
    for _ in range(3):  # it can never fit: refused without evicting anything for it, however often
        code = status_of(lambda: client.store(P, "too big", b"y" * (2 << 20), embedding=unit_vector(100)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    after = client.stats()
    assert (after.entries, after.evictions) == (before.entries, before.evictions)
    assert_consistent(server)
    server.stop()
    server, client = policy_server(**settings)
    assert client.lookup(P, "q59").hit
    assert_consistent(server)


@pytest.fixture
def small_volume(tmp_path):
    """A 4 MiB tmpfs, a data volume that fills up. Mounting needs root: skipped without."""
    volume = tmp_path / "volume"
    volume.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(volume)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield volume
    subprocess.run(["umount", "-l", str(volume)], check=False)


def test_a_full_data_volume_evicts_like_the_map_ceiling_and_never_corrupts(policy_server, small_volume, caplog):
    """max_map_bytes (16 GiB by default) far over the volume: when the volume fills, LMDB's
    commit fails (as EIO); the Store evicts and retries as at the map ceiling, instead of
    failing with INTERNAL from then on."""
    settings = dict(data_dir=str(small_volume / "data"))
    with caplog.at_level("WARNING", logger="semcache"):
        server, client = policy_server(**settings)
    assert "larger than the data volume" in caplog.text
    for i in range(100):  # ~10 MB of responses onto 4 MiB: every Store is acknowledged
        client.store(P, f"q{i}", bytes([i]) * 100_000, embedding=unit_vector(i))
    stats = client.stats()
    assert 0 < stats.entries < 100 and stats.evictions == 100 - stats.entries
    assert client.lookup(P, "q99").response == bytes([99]) * 100_000
    assert_consistent(server)
    server.stop()
    server, client = policy_server(**settings)
    assert client.lookup(P, "q99").hit and client.stats().entries == stats.entries
    assert_consistent(server)


# -- crash consistency --------------------------------------------------------------


def test_interrupted_invalidation_is_finished_at_start(policy_server):
    server, client = policy_server()
    for i in range(30):
        store(client, i)
    store(client, 100, partition={"namespace": "keep"})
    cache = server.cache
    partition_id = next(p for p in cache.storage.registry.all() if p.key.namespace == "app").id
    # The state a kill -9 leaves mid-invalidation: partition marked, some entries deleted.
    with cache.storage.store.write() as txn:
        cache.storage.store.mark_partition_dropping(txn, partition_id)
        for entry_id in list(cache.storage.store.iter_partition_entry_ids(txn, partition_id))[:10]:
            cache.storage.store.delete_entry(txn, entry_id, cache.storage.store.get_entry(txn, entry_id))
    server.stop()
    server, client = policy_server()
    assert [p.namespace for p in client.stats().partitions] == ["keep"]
    assert client.stats().entries == 1
    assert not client.lookup(P, "question 5").hit
    store(client, 5)  # the name opens a fresh partition
    assert client.stats(P).entries == 1
    assert_consistent(server)
