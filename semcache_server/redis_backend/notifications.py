"""Change notifications: one pub/sub connection per frontend, to any node of the cluster
(Redis Cluster broadcasts PUBLISH to every node), on which each change script announces
the log it appended to. The listener hands the names to `on_change`; the storage then
reads just those logs. A message can be lost (pub/sub does not queue for a subscriber
that is reconnecting), so the storage also reads every log at a slower interval."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from semcache_server.redis_backend.keys import CHANGES

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
