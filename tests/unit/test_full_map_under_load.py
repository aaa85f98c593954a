"""Issue 21, case 3: at the LMDB map ceiling under concurrent Stores and Lookups, a Store
is refused "storage is full" only when nothing is left to evict, never while evictable
entries remain. Real LMDB, a small real map, real threads."""

from __future__ import annotations

import threading
import time

from semcache_server.cache import SemanticCache
from semcache_server.errors import StorageFullError
from semcache_server.partition import PartitionKey
from semcache_server.settings import Settings
from tests.helpers import POLICY_DIMENSION, unit_vector

KEY = PartitionKey("ns", "m", "v")


def test_stores_at_the_ceiling_under_load_evict_instead_of_failing(tmp_path):
    settings = Settings(
        data_dir=str(tmp_path / "data"), embedding_model="none", embedding_dimension=POLICY_DIMENSION,
        max_map_bytes=4 << 20, sync_writes=False,
    )
    cache = SemanticCache(settings, None)
    vectors = [unit_vector(i) for i in range(64)]
    refused: list[str] = []
    stored = [0]
    slowest = [0.0]
    lock = threading.Lock()
    stop = threading.Event()

    def writer(worker: int) -> None:
        for i in range(150):
            started = time.monotonic()
            try:
                cache.store(KEY, f"w{worker} q{i}", b"x" * (8_000 + 500 * (i % 7)), embedding=vectors[(worker * 7 + i) % 64])
                with lock:
                    stored[0] += 1
                    slowest[0] = max(slowest[0], time.monotonic() - started)
            except StorageFullError as e:
                with lock:
                    refused.append(f"{cache.stats().entries} entries left: {e}")

    def reader() -> None:
        i = 0
        while not stop.is_set():
            cache.lookup(KEY, "", embedding=vectors[i % 64])
            i += 1

    readers = [threading.Thread(target=reader) for _ in range(3)]
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join(120)
    stop.set()
    for t in readers:
        t.join(10)
    try:
        assert stored[0] == 900 and not refused, (refused[:3], f"slowest Store that succeeded: {slowest[0]:.2f} s")
        assert cache.stats().totals.evictions > 0  # the map really was full
        assert cache.check_consistency() == []
    finally:
        cache.close()
