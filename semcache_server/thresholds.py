"""Threshold resolution: which min_similarity (and gray band) a Lookup is held to.

The request's value, else the namespace's: its configured one (the run-time value of
SetNamespaceThreshold, persisted by the storage, else the settings', namespace then
server) as audits have moved it under max_false_hit_rate (semcache_server/calibration.py).
The band's low end and the verifier score come from the request, else the settings.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping

from semcache_server.calibration import Calibration
from semcache_server.decision import DecisionPolicy
from semcache_server.errors import InvalidArgumentError
from semcache_server.settings import Settings
from semcache_server.validation import check_similarity


class Thresholds:
    def __init__(self, settings: Settings, runtime: Mapping[str, float], calibration: Calibration) -> None:
        self._settings = settings
        self._runtime = dict(runtime)
        self.calibration = calibration
        self._lock = threading.Lock()

    def resolve(self, namespace: str, min_similarity: float | None) -> float:
        """The request's value (checked), else the namespace's in force."""
        if min_similarity is None:
            return self.in_force(namespace)
        check_similarity(min_similarity)
        return float(min_similarity)

    def policy(
        self, namespace: str, min_similarity: float | None, band_low: float | None = None, min_score: float | None = None,
        veto_score: float | None = None,
    ) -> DecisionPolicy:
        """The decision policy of one Lookup: its threshold, the band the verifier decides,
        and the verifier's veto at or above the threshold."""
        threshold = self.resolve(namespace, min_similarity)
        if band_low is None:
            band_low = self._settings.for_namespace(namespace, "verifier_band_low")
        else:
            check_similarity(band_low)
        min_score = self._score(namespace, "verifier_min_score", min_score)
        veto_score = self._score(namespace, "verifier_veto_score", veto_score)
        setting = functools.partial(self._settings.for_namespace, namespace)
        return DecisionPolicy(
            threshold, band_low=float(band_low), min_verifier_score=min_score,
            max_verified=self._settings.verifier_max_candidates, veto_score=veto_score,
            agreement_neighbours=int(setting("agreement_neighbours")),
            agreement_min_similarity=float(setting("agreement_min_similarity")),
            agreement_margin=float(setting("agreement_margin")),
        )

    def _score(self, namespace: str, name: str, requested: float | None) -> float:
        """A verifier score setting: the request's (checked), else the namespace's."""
        if requested is None:
            return float(self._settings.for_namespace(namespace, name))
        if not 0.0 <= requested <= 1.0:  # NaN fails too
            raise InvalidArgumentError(f"{name} must be between 0 and 1, got {requested}")
        return float(requested)

    def in_force(self, namespace: str) -> float:
        """The namespace's threshold as audits have moved it (its configured one without them)."""
        return self.calibration.threshold(namespace, self.for_namespace(namespace))

    def for_namespace(self, namespace: str) -> float:
        """The namespace's configured threshold."""
        runtime = self._runtime.get(namespace)
        return self._settings.for_namespace(namespace, "min_similarity") if runtime is None else runtime

    def replace_runtime(self, runtime: Mapping[str, float]) -> None:
        """Another frontend of a shared backend set these run-time thresholds."""
        with self._lock:
            self._runtime = dict(runtime)

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
        return self.in_force(namespace)
