"""Threshold resolution: request, then the namespace's run-time value, then the settings."""

from __future__ import annotations

import dataclasses

import pytest

from semcache_server.calibration import Calibration
from semcache_server.errors import InvalidArgumentError
from semcache_server.settings import NamespaceSettings, Settings
from semcache_server.thresholds import Thresholds

SETTINGS = dataclasses.replace(
    Settings(min_similarity=0.92), namespaces={"support": NamespaceSettings(min_similarity=0.85)}
)


def test_the_request_wins_then_the_runtime_value_then_the_namespace_then_the_server():
    thresholds = Thresholds(SETTINGS, {"tuned": 0.8}, Calibration(SETTINGS, {}, lambda namespace, data: None))
    assert thresholds.resolve("support", 0.5) == 0.5
    assert thresholds.resolve("tuned", None) == 0.8
    assert thresholds.resolve("support", None) == 0.85
    assert thresholds.resolve("other", None) == 0.92


@pytest.mark.parametrize("value", [1.5, -1.01, float("nan"), float("inf")])
def test_a_threshold_outside_minus_one_to_one_is_refused(value):
    thresholds = Thresholds(SETTINGS, {}, Calibration(SETTINGS, {}, lambda namespace, data: None))
    with pytest.raises(InvalidArgumentError):
        thresholds.resolve("support", value)
    with pytest.raises(InvalidArgumentError):
        thresholds.set_namespace("support", value, persist=lambda _: None)


def test_setting_persists_the_whole_mapping_before_it_takes_effect_and_clearing_restores_the_settings():
    saved: list[tuple[dict[str, float], float]] = []
    thresholds = Thresholds(SETTINGS, {"other": 0.7}, Calibration(SETTINGS, {}, lambda namespace, data: None))

    def persist(mapping: dict[str, float]) -> None:
        saved.append((mapping, thresholds.for_namespace("support")))  # what is in force meanwhile

    assert thresholds.set_namespace("support", 0.8, persist) == 0.8
    assert saved[-1] == ({"other": 0.7, "support": 0.8}, 0.85)
    assert thresholds.set_namespace("support", None, persist) == 0.85
    assert saved[-1] == ({"other": 0.7}, 0.8)


def test_a_failed_persist_leaves_the_threshold_as_it_was():
    thresholds = Thresholds(SETTINGS, {}, Calibration(SETTINGS, {}, lambda namespace, data: None))

    def persist(_: dict[str, float]) -> None:
        raise OSError("disk gone")

    with pytest.raises(OSError):
        thresholds.set_namespace("support", 0.5, persist)
    assert thresholds.for_namespace("support") == 0.85
