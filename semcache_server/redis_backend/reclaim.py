"""Reclaiming what Redis dropped. Only entry records carry an expiry, so under maxmemory
(`volatile-lfu`) Redis evicts records and never the cache's structures; but an evicted or
expired record leaves its vector, exact-tier field and bookkeeping behind, and those are
most of an entry's bytes when responses are short. Redis announces each key it evicts or
expires as a key event on the node that held it (`notify-keyspace-events` with E, e and x);
the reclaimer subscribes on every primary and removes the leftovers of each announced entry
with the REMOVE script (which counts them as expirations or evictions), a few times a
second. Every frontend does it (the script is idempotent). Where Redis refuses CONFIG SET
(some managed services), set the flags there; without them only the sweep reclaims
(every sweep_interval_seconds), and Stores can meet Redis' maxmemory meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from typing import Any

from semcache_server.errors import SemcacheError
from semcache_server.redis_backend.keys import PartitionKeys

log = logging.getLogger("semcache")

KEY_EVENT_FLAGS = "Exe"  # keyevent notifications of evictions (e) and expirations (x)
CHANNELS = ("__keyevent@0__:evicted", "__keyevent@0__:expired")
_ENTRY = re.compile(rb"^sc:(\{sc:[0-9a-f]{16}\}):e:(\d+)$")
# How often announced entries are removed, and how often the primaries are found again
# (a failover moves them).
RECLAIM_INTERVAL_SECONDS = 0.1
REFRESH_SECONDS = 10.0


class Reclaimer:
    def __init__(self, client: Any, writer: Any) -> None:
        self._client = client
        self._writer = writer  # RedisWriter
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-reclaim", daemon=True)
        self._warned = False
        self.reclaimed = 0  # entries whose leftovers it removed

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _enable_key_events(self) -> None:
        for node in self._client.get_nodes():
            try:
                connection = self._client.get_redis_connection(node)
                current = connection.config_get("notify-keyspace-events").get("notify-keyspace-events", "")
                if not set(KEY_EVENT_FLAGS) <= set(current):
                    connection.config_set("notify-keyspace-events", "".join(sorted(set(current) | set(KEY_EVENT_FLAGS))))
            except Exception as e:  # CONFIG refused or the node away: the sweep still reclaims
                if not self._warned:
                    log.warning(
                        "redis backend: cannot enable key events on %s:%s (%s); set notify-keyspace-events to include "
                        "'%s' there, or evicted entries' leftovers wait for the sweep", node.host, node.port, e, KEY_EVENT_FLAGS,
                    )
                    self._warned = True

    def _run(self) -> None:
        while not self._stop.is_set():
            subscriptions = []
            try:
                self._enable_key_events()
                for node in self._client.get_primaries():
                    pubsub = self._client.get_redis_connection(node).pubsub(ignore_subscribe_messages=True)
                    subscriptions.append(pubsub)
                    pubsub.subscribe(*CHANNELS)
                refresh_at = time.monotonic() + REFRESH_SECONDS
                while not self._stop.is_set() and time.monotonic() < refresh_at:
                    announced: dict[str, list[int]] = {}
                    for pubsub in subscriptions:
                        while (message := pubsub.get_message(timeout=0.0)) is not None:
                            found = _ENTRY.match(message["data"]) if message.get("type") == "message" else None
                            if found:
                                announced.setdefault(found[1].decode(), []).append(int(found[2]))
                    self._reclaim(announced)
                    self._stop.wait(RECLAIM_INTERVAL_SECONDS)
            except Exception as e:  # a node went away: find the primaries again
                log.debug("redis backend: key events interrupted: %s", e)
                self._stop.wait(0.5)
                with contextlib.suppress(Exception):
                    self._client.nodes_manager.initialize()
            finally:
                for pubsub in subscriptions:
                    with contextlib.suppress(Exception):
                        pubsub.close()

    def _reclaim(self, announced: dict[str, list[int]]) -> None:
        for tag, entry_ids in announced.items():
            try:
                _, expired, evicted = self._writer.remove(PartitionKeys(tag), entry_ids, "")
                self.reclaimed += expired + evicted
            except SemcacheError as e:  # the sweep is the backstop
                log.debug("redis backend: reclaiming %d entries failed: %s", len(entry_ids), e)
