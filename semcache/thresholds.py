"""Threshold resolution: which min_similarity a Lookup is held to.

The request's value, else the namespace's run-time value (SetNamespaceThreshold,
persisted by the storage), else the settings' (namespace, then server).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from semcache.settings import Settings
from semcache.validation import check_similarity


class Thresholds:
    def __init__(self, settings: Settings, runtime: Mapping[str, float]) -> None:
        self._settings = settings
        self._runtime = dict(runtime)
        self._lock = threading.Lock()

    def resolve(self, namespace: str, min_similarity: float | None) -> float:
        """The request's value (checked), else the namespace's."""
        if min_similarity is None:
            return self.for_namespace(namespace)
        check_similarity(min_similarity)
        return float(min_similarity)

    def for_namespace(self, namespace: str) -> float:
        runtime = self._runtime.get(namespace)
        return self._settings.min_similarity_for(namespace) if runtime is None else runtime

    def set_namespace(
        self, namespace: str, min_similarity: float | None, persist: Callable[[dict[str, float]], None]
    ) -> float:
        """Set (None: clear) a namespace's run-time threshold; `persist` stores the whole new
        mapping before it takes effect. Returns the threshold now in force."""
        if min_similarity is not None:
            check_similarity(min_similarity)
        with self._lock:
            thresholds = dict(self._runtime)
            if min_similarity is None:
                thresholds.pop(namespace, None)
            else:
                thresholds[namespace] = float(min_similarity)
            persist(thresholds)
            self._runtime = thresholds
        return self.for_namespace(namespace)
