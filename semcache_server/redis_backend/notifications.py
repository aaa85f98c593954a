"""Change notifications: one pub/sub connection per frontend, to any node of the cluster
(Redis Cluster broadcasts PUBLISH to every node), on which each change script announces
the log it appended to. The listener hands the names to `on_change`; the storage then
reads just those logs (`ReplicaFeed`). A message can be lost (pub/sub does not queue for
a subscriber that is reconnecting), so the feed also reads every log at a slower interval."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from semcache_server.errors import SemcacheError
from semcache_server.redis_backend.connection import redis_errors
from semcache_server.redis_backend.keys import CHANGES
from semcache_server.redis_backend.replica import RedisPartition
from semcache_server.redis_backend.writer import LOG_MAX_LEN

log = logging.getLogger("semcache")


class ChangeListener:
    def __init__(self, client: Any, on_change: Callable[[bytes], None], on_reconnect: Callable[[], None]) -> None:
        self._client = client
        self._on_change = on_change
        self._on_reconnect = on_reconnect  # messages may have been lost meanwhile
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-changes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            pubsub = None
            try:
                node = self._client.get_random_node()
                pubsub = self._client.get_redis_connection(node).pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANGES)
                self._on_reconnect()
                if failing:
                    log.info("redis backend: change notifications work again (from %s:%s)", node.host, node.port)
                failing = False
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None and message.get("type") == "message":
                        self._on_change(message["data"])
            except Exception as e:  # any failure: another node, after a pause
                if not failing:
                    log.warning(
                        "redis backend: change notifications lost (%s: %s); reading logs by interval", type(e).__name__, e,
                    )
                failing = True
                self._stop.wait(0.5)
                with contextlib.suppress(Exception):  # the cluster is still away: the next round tries again
                    self._client.nodes_manager.initialize()
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()


class ReplicaFeed:
    """Keeps a frontend's replicas current: reads a partition's change log as soon as the
    listener hears it announced, and every log each interval (announcements can be lost)."""

    def __init__(self, client: Any, interval_seconds: float) -> None:
        self._client = client
        self._interval_seconds = interval_seconds
        self.by_log: dict[bytes, RedisPartition] = {}  # change-log key -> the replica it feeds
        self._changed: set[bytes] = set()  # logs announced since the last read
        self._changed_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._listener = ChangeListener(client, self.announced, self.announced_all)
        self._thread = threading.Thread(target=self._tail, name="redis-change-logs", daemon=True)

    def add(self, partition: RedisPartition) -> None:
        """A replica just loaded: read what changed while it loaded."""
        self.by_log[partition.keys.log.encode()] = partition
        self.announced(partition.keys.log.encode())

    def start(self) -> None:
        self._listener.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._listener.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def announced(self, log_key: bytes) -> None:
        if log_key in self.by_log:
            with self._changed_lock:
                self._changed.add(log_key)
            self._wake.set()

    def announced_all(self) -> None:
        with self._changed_lock:
            self._changed.update(self.by_log)
        self._wake.set()

    def poll(self, partitions: Sequence[RedisPartition] | None = None) -> None:
        """Apply new change-log entries to these replicas (all by default), one pipeline per shard."""
        partitions = list(self.by_log.values()) if partitions is None else partitions
        if not partitions:
            return
        with redis_errors("reads change logs"):
            pipe = self._client.pipeline(transaction=False)
            for partition in partitions:
                pipe.xrange(partition.keys.log, min=b"(" + partition.last_log_id, max="+", count=LOG_MAX_LEN)
            replies = pipe.execute()
            for partition, entries in zip(partitions, replies, strict=True):
                if entries and not partition.apply(entries, self._client):
                    partition.load(self._client)

    def _tail(self) -> None:
        """Read the logs announced as changed at once, and every log each
        redis_poll_interval_seconds (announcements can be lost)."""
        failing = False
        while not self._stop.is_set():
            announced = self._wake.wait(self._interval_seconds)
            self._wake.clear()
            with self._changed_lock:
                changed, self._changed = self._changed, set()
            try:
                self.poll([self.by_log[k] for k in changed] if announced else None)
                if failing:
                    log.info("redis backend: change logs are read again")
                failing = False
            except SemcacheError as e:
                with self._changed_lock:
                    self._changed.update(changed)
                if not failing:
                    log.warning("redis backend: reading change logs failed (retrying): %s", e)
                failing = True
                self._stop.wait(0.1)

