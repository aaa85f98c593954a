"""Hit statistics live in LMDB's entry_hits table: counting hits must not rewrite
entries, and the counts must survive restarts and steer eviction."""

from __future__ import annotations

from semcache_server.cache import SemanticCache
from semcache_server.partition import PartitionKey
from semcache_server.settings import Settings
from tests.helpers import POLICY_DIMENSION, ManualClock, unit_vector

KEY = PartitionKey("ns", "m", "v1")


def _cache(tmp_path, clock: ManualClock, **overrides) -> SemanticCache:
    settings = Settings(
        data_dir=str(tmp_path / "data"), embedding_model="none", embedding_dimension=POLICY_DIMENSION, **overrides
    )
    return SemanticCache(settings, None, clock=clock)


def _raw_entry(cache: SemanticCache, entry_id: int) -> bytes:
    with cache.storage.store.read() as txn:
        raw = cache.storage.store.raw_entry(txn, entry_id)
    assert raw is not None
    return raw


def test_counting_hits_writes_the_hits_row_and_leaves_the_entry_as_it_was(tmp_path):
    clock = ManualClock(1_000_000.0)
    cache = _cache(tmp_path, clock)
    entry_id = int(cache.store(KEY, "q", b"r" * 50_000, embedding=unit_vector(1)).entry_id)
    before = _raw_entry(cache, entry_id)
    for _ in range(3):
        clock.now += 1
        assert cache.lookup(KEY, "q").hit
    cache.flush_stats()
    assert _raw_entry(cache, entry_id) == before
    with cache.storage.store.read() as txn:
        hits = cache.storage.store.get_hits(txn, entry_id)
    assert hits.hit_count == 3 and hits.last_hit_at == clock.now and hits.lfu_score > 0
    cache.close()


def test_hit_statistics_survive_a_restart_and_steer_eviction(tmp_path):
    clock = ManualClock(1_000_000.0)
    cache = _cache(tmp_path, clock, max_entries=3)
    for n, query in enumerate(("a", "b", "c")):
        clock.now += 1
        cache.store(KEY, query, b"x", embedding=unit_vector(n))
    for _ in range(4):
        clock.now += 1
        assert cache.lookup(KEY, "a").hit and cache.lookup(KEY, "c").hit
    cache.close()  # flushes
    cache = _cache(tmp_path, clock, max_entries=3)
    clock.now += 1
    cache.store(KEY, "d", b"x", embedding=unit_vector(3))
    # Without the persisted hits, "a" (the oldest) would go first.
    assert [cache.lookup(KEY, q).hit for q in ("a", "b", "c", "d")] == [True, False, True, True]
    assert cache.check_consistency() == []
    cache.close()


def test_an_entry_stored_before_the_hits_table_keeps_its_counts(tmp_path):
    clock = ManualClock(1_000_000.0)
    cache = _cache(tmp_path, clock, max_entries=2)
    old_id = int(cache.store(KEY, "old", b"x", embedding=unit_vector(1)).entry_id)
    clock.now += 1
    cache.store(KEY, "new", b"x", embedding=unit_vector(2))
    with cache.storage.store.write() as txn:  # as an earlier version left it: the counts inside the record
        record = cache.storage.store.get_entry(txn, old_id)
        updated = type(record).FromString(record.SerializeToString())
        updated.hit_count, updated.last_hit_at = 7, clock.now
        updated.lfu_score = cache.storage.ledger.policy.queue("ns").new_score(clock.now) + 3  # as if hit 7 times
        cache.storage.store.update_entry(txn, old_id, record, updated)
        cache.storage.store.delete_meta(txn, "hits_table_from_entry_id")  # nor did it know the table
    cache.close()
    cache = _cache(tmp_path, clock, max_entries=2)
    clock.now += 1
    assert cache.lookup(KEY, "old").hit
    cache.flush_stats()
    with cache.storage.store.read() as txn:
        assert cache.storage.store.get_hits(txn, old_id).hit_count == 8
    cache.store(KEY, "third", b"x", embedding=unit_vector(3))
    assert cache.lookup(KEY, "old").hit and not cache.lookup(KEY, "new").hit
    cache.close()


def test_removing_an_entry_removes_its_hits_row(tmp_path):
    clock = ManualClock(1_000_000.0)
    cache = _cache(tmp_path, clock)
    entry_id = cache.store(KEY, "q", b"x", embedding=unit_vector(1)).entry_id
    assert cache.lookup(KEY, "q").hit
    cache.flush_stats()
    assert cache.delete(KEY, entry_id)
    with cache.storage.store.read() as txn:
        assert cache.storage.store.get_hits(txn, int(entry_id)) is None
    assert cache.check_consistency() == []
    cache.close()


def test_entries_stored_with_the_table_are_counted_without_reading_their_record(tmp_path):
    """The first id stored with entry_hits is kept across restarts; an entry from then on
    whose record has counts (which this version never writes) is not read for them."""
    clock = ManualClock(1_000_000.0)
    cache = _cache(tmp_path, clock)
    first = cache.storage.maintenance.hits_table_from_entry_id
    entry_id = int(cache.store(KEY, "q", b"x", embedding=unit_vector(1)).entry_id)
    assert entry_id >= first
    with cache.storage.store.write() as txn:  # a record this version would never write
        record = cache.storage.store.get_entry(txn, entry_id)
        updated = type(record).FromString(record.SerializeToString())
        updated.hit_count = 1000
        cache.storage.store.update_entry(txn, entry_id, record, updated)
    assert cache.lookup(KEY, "q").hit
    cache.flush_stats()
    with cache.storage.store.read() as txn:
        assert cache.storage.store.get_hits(txn, entry_id).hit_count == 1
    cache.close()
    cache = _cache(tmp_path, clock)
    assert cache.storage.maintenance.hits_table_from_entry_id == first
    cache.close()
