"""Concurrent Stores share LMDB commits, and each still gets exactly its own outcome."""

from __future__ import annotations

import threading
import time

import pytest

from semcache_server.cache import SemanticCache
from semcache_server.errors import ResourceExhaustedError
from semcache_server.group_commit import GroupCommit
from semcache_server.partition import PartitionKey
from semcache_server.settings import Settings
from tests.helpers import POLICY_DIMENSION, unit_vector


def _cache(tmp_path, **overrides) -> SemanticCache:
    settings = Settings(
        data_dir=str(tmp_path / "data"), embedding_model="none", embedding_dimension=POLICY_DIMENSION,
        sync_writes=True, **overrides,
    )
    return SemanticCache(settings, None)


def _in_threads(count: int, work) -> list[BaseException]:
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        barrier.wait()
        try:
            work(n)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_stores_share_commits_and_all_land(tmp_path):
    cache = _cache(tmp_path)
    key = PartitionKey("ns", "m", "v1")
    ids: dict[str, str] = {}

    def work(n: int) -> None:
        for i in range(20):
            query = f"t{n} q{i}"
            ids[query] = cache.store(key, query, b"a", embedding=unit_vector(n * 100 + i)).entry_id

    assert _in_threads(16, work) == []
    assert len(set(ids.values())) == 320
    assert cache.store_commits < 320  # fsyncs were shared
    assert len(cache.stats().partitions) == 1  # one partition, though many Stores opened it at once
    assert cache.check_consistency() == []
    cache.close()
    cache = _cache(tmp_path)
    for query, entry_id in ids.items():
        assert cache.lookup(key, query).entry_id == entry_id
    cache.close()


def test_same_query_stored_at_once_leaves_one_entry(tmp_path):
    cache = _cache(tmp_path)
    key = PartitionKey("ns", "m", "v1")
    results = []
    errors = _in_threads(
        16, lambda n: results.append(cache.store(key, "the same question", f"a{n}".encode(), embedding=unit_vector(n)))
    )
    assert errors == []
    assert sum(r.replaced for r in results) == 15
    assert cache.stats().entries == 1
    winner = cache.lookup(key, "the same question")
    assert winner.hit and winner.entry_id == max((r.entry_id for r in results), key=int)
    assert cache.check_consistency() == []
    cache.close()


def test_refused_stores_among_concurrent_ones_fail_alone(tmp_path):
    cache = _cache(tmp_path, max_bytes=20_000, max_response_bytes=50_000, max_message_bytes=100_000)
    key = PartitionKey("ns", "m", "v1")
    outcomes: dict[int, object] = {}

    def work(n: int) -> None:
        size = 30_000 if n % 4 == 0 else 100  # over the whole byte budget: refused
        try:
            outcomes[n] = cache.store(key, f"q{n}", b"x" * size, embedding=unit_vector(n)).entry_id
        except ResourceExhaustedError as e:
            outcomes[n] = e

    assert _in_threads(16, work) == []
    refused = sorted(n for n, o in outcomes.items() if isinstance(o, ResourceExhaustedError))
    assert refused == [n for n in range(16) if n % 4 == 0]
    assert cache.stats().entries == 12
    assert cache.check_consistency() == []
    cache.close()


def test_new_versions_opened_at_once_respect_max_versions(tmp_path):
    cache = _cache(tmp_path, max_versions_per_model=2)
    errors = _in_threads(8, lambda n: cache.store(PartitionKey("ns", "m", f"v{n}"), "q", b"a", embedding=unit_vector(n)))
    assert errors == []
    cache.wait_for_purges()
    assert len(cache.stats().partitions) == 2
    assert cache.check_consistency() == []
    cache.close()


@pytest.mark.parametrize("threads", [1, 8])
def test_eviction_budget_holds_under_concurrency(tmp_path, threads):
    cache = _cache(tmp_path, max_entries=50)
    key = PartitionKey("ns", "m", "v1")

    def store_some(n: int) -> None:
        for i in range(160 // threads):
            cache.store(key, f"t{n} q{i}", b"a", embedding=unit_vector(n * 1000 + i))

    errors = _in_threads(threads, store_some)
    assert errors == []
    assert cache.stats().entries == 50
    assert cache.check_consistency() == []
    cache.close()


@pytest.mark.parametrize("ivf", [False, True])
def test_one_batch_that_replaces_and_evicts_its_own_entries_leaves_indexes_exact(tmp_path, ivf):
    # A commit's vectors reach the index in one call; an entry added earlier in the same
    # commit and then replaced or evicted must not stay searchable.
    from semcache_server.cache import StoreItem

    cache = _cache(tmp_path, max_entries=30, ivf_min_entries=20 if ivf else 0)
    key = PartitionKey("ns", "m", "v1")
    cache.store_batch([StoreItem(key, f"old {i}", b"r", embedding=unit_vector(1000 + i)) for i in range(30)])
    index = cache.storage.partition(key).index
    index.wait_for_build()
    assert index.kind == ("ivf" if ivf else "flat")
    items = [StoreItem(key, f"new {i}", b"first", embedding=unit_vector(i)) for i in range(40)]
    items.append(StoreItem(key, "new 39", b"second", embedding=unit_vector(5000)))  # replaces this batch's "new 39"
    results = cache.store_batch(items)
    assert all(not isinstance(r, Exception) for r in results)
    assert results[-1].replaced
    index.wait_for_build()
    assert cache.check_consistency() == []
    stats = cache.stats()
    assert stats.entries == 30 and stats.totals.evictions == 40  # the 30 old ones and 10 of this batch
    live = {results[i].entry_id for i in range(40)} - {results[39].entry_id}
    for i in range(40):
        found = cache.lookup(key, "", embedding=unit_vector(i), min_similarity=0.99)
        if i < 10 or i == 39:  # evicted or replaced within this very commit: never served
            assert not found.hit, (i, found.entry_id)
        else:  # the rest is searchable as soon as store_batch returned
            assert found.hit and found.entry_id == results[i].entry_id and found.entry_id in live
    assert cache.lookup(key, "", embedding=unit_vector(5000)).response == b"second"
    cache.close()


def test_a_committed_store_returns_without_waiting_for_the_next_commit(tmp_path):
    """Each commit is made slow (a 50 ms sleep after it, as on a disk with slow syncs). A
    caller whose Store is committed must be woken then, not sit out the commit that the
    next leader starts. Counted, not timed: commits that finished after the caller's own
    and before it returned."""
    cache = _cache(tmp_path)
    key = PartitionKey("ns", "m", "v1")
    commit_of: dict[str, int] = {}  # query -> number of the commit that stored it
    storage = cache.storage
    commit_batch = storage.writer.commit_batch_locked
    finished = [0]

    def slow_commit_batch(batch):
        retired = commit_batch(batch)
        time.sleep(0.05)
        finished[0] += 1
        commit_of.update((job.record.query, finished[0]) for job in batch)
        return retired

    storage.group_commit = GroupCommit(storage.write_lock, slow_commit_batch, storage.invalidator.retire)
    waited_through: list[int] = []

    def work(n: int) -> None:
        for i in range(5):
            query = f"t{n} q{i}"
            cache.store(key, query, b"a", embedding=unit_vector(n * 100 + i))
            waited_through.append(finished[0] - commit_of[query])

    assert _in_threads(12, work) == []
    assert len(waited_through) == 60
    # A woken caller needs the GIL for microseconds, the next commit takes 50 ms: allow
    # one slow wake-up on a loaded machine, not a pattern.
    assert sum(waited_through) <= 1, waited_through
    assert cache.check_consistency() == []
    cache.close()
