"""A full LMDB map when the stats flush runs: at shutdown (SIGTERM) and in the background.
The map is filled for real (filler records until LMDB refuses), not simulated."""

from __future__ import annotations

import logging

from semcache_server.cache import SemanticCache
from semcache_server.errors import StorageFullError
from semcache_server.partition import PartitionKey
from semcache_server.settings import Settings
from tests.helpers import POLICY_DIMENSION, fill_map, unit_vector

KEY = PartitionKey("ns", "m", "v")


def _full_cache(tmp_path) -> tuple[SemanticCache, Settings, list[int]]:
    settings = Settings(
        data_dir=str(tmp_path / "data"), embedding_model="none", embedding_dimension=POLICY_DIMENSION,
        max_map_bytes=1 << 20, sync_writes=False,
    )
    cache = SemanticCache(settings, None)
    ids = [int(cache.store(KEY, f"q{i}", b"x" * 20_000, embedding=unit_vector(i)).entry_id) for i in range(20)]
    for i in range(5):
        assert cache.lookup(KEY, f"q{i}").hit  # hit counts wait for the next flush
    assert fill_map(cache.storage.store) > 0  # type: ignore[attr-defined]
    return cache, settings, ids


def test_a_full_map_at_shutdown_closes_cleanly_and_keeps_every_entry(tmp_path, caplog):
    cache, settings, ids = _full_cache(tmp_path)
    with caplog.at_level(logging.WARNING, logger="semcache"):
        cache.close()  # raised StorageFullError from the shutdown flush before
    assert not any(r.exc_info for r in caplog.records)
    reopened = SemanticCache(settings, None)
    assert reopened.check_consistency() == []
    survivors = reopened.stats().entries
    assert survivors >= len(ids) - 8  # at most a few evicted to make room, none lost otherwise
    for i in range(5):  # the entries that were hit are the last to be evicted
        assert reopened.lookup(KEY, f"q{i}").hit
    reopened.close()


def test_a_flush_that_cannot_fit_keeps_its_counts_for_the_next_one(tmp_path, caplog):
    cache, _, _ = _full_cache(tmp_path)
    storage = cache.storage
    try:
        storage.maintenance.flush_stats()  # type: ignore[attr-defined]
    except StorageFullError:
        pass
    else:
        raise AssertionError("the map should have been full")
    pending = storage.ledger.take_pending(storage.registry.all())  # type: ignore[attr-defined]
    assert sum(count for count, _, _ in pending.hits.values()) == 5  # put back, not lost
    storage.ledger.put_back(pending, storage.registry.all())  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, logger="semcache"):
        cache.close()
    assert not any(r.exc_info for r in caplog.records)  # no traceback


def test_a_map_that_stores_filled_can_still_be_evicted_from(tmp_path):
    """LMDB copies every page a delete touches before it frees the old ones: a map that
    Stores fill to its last page cannot delete anything, so eviction could never make room
    again. Stores leave a reserve; an eviction's delete (1% of the entries, a few at least),
    spread over the map and with a reader holding the snapshot it frees pages from, still
    commits."""
    from semcache_server.store import Store
    from semcache_server.v1.records_pb2 import EntryRecord

    store = Store(tmp_path / "data", max_map_bytes=1 << 20, sync_writes=False)
    records = []
    while True:
        record = EntryRecord(partition_id=1, normalized_query=f"question number {len(records)}", response=b"x" * 600)
        try:
            with store.write(keep_delete_reserve=True) as txn:
                store.put_entry(txn, len(records), record)
        except StorageFullError:
            break
        records.append(record)
    assert len(records) > 100
    reader = store.read()  # a Lookup still reading: the pages this delete frees are not reusable yet
    try:
        with store.write() as txn:
            for entry_id in range(0, len(records), len(records) // 16):  # a leaf page each, at least
                store.delete_entry(txn, entry_id, records[entry_id])
    finally:
        reader.abort()
        store.close()
