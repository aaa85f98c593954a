"""Admission: how many cache calls may be in progress at once."""

from __future__ import annotations

import threading
from collections.abc import Callable

from semcache_server.errors import OverloadedError


class Admission:
    """At most `limit` cache requests in progress at once; one more is refused at once
    (OverloadedError, RESOURCE_EXHAUSTED) instead of queueing behind work that already
    keeps the model busy: a caller of a cache does better to treat it as a miss now
    than to wait. Health checks are not counted, so probes still answer under overload."""

    def __init__(self, limit: int, on_refused: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.in_progress = 0
        self._on_refused = on_refused
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        with self._lock:
            admitted = self.in_progress < self.limit
            if admitted:
                self.in_progress += 1
        if not admitted:
            if self._on_refused is not None:
                self._on_refused()
            raise OverloadedError(
                f"{self.limit} requests are already in progress (grpc_workers); retry later or treat this as a miss"
            )

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.in_progress -= 1
