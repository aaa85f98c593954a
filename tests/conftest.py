"""Fixtures for every test. Unit tests (tests/unit) load no model and start no server;
the fixtures that do are in tests/integration/conftest.py."""

from __future__ import annotations

import pytest

from tests.helpers import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
