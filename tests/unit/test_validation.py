"""Request validation: the cases reported against it, and properties over any input
(hypothesis): a validator either accepts its input or raises InvalidArgumentError /
ResourceExhaustedError, never anything else."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semcache_server.errors import InvalidArgumentError, ResourceExhaustedError
from semcache_server.settings import Settings
from semcache_server.validation import MAX_COST, MAX_ENTRY_ID, RequestValidator, parse_entry_id

VALIDATOR = RequestValidator(Settings(max_query_bytes=64), 4, has_model=True)


@pytest.mark.parametrize("text", ["18446744073709551616", "١", "12a", "", "-1", " 1", "1" * 21, "٣٤"])
def test_not_an_entry_id(text):
    with pytest.raises(InvalidArgumentError):
        parse_entry_id(text)


def test_entry_ids_up_to_the_largest_an_id_can_be():
    assert parse_entry_id("1") == 1 and parse_entry_id("007") == 7
    assert parse_entry_id(str(MAX_ENTRY_ID)) == MAX_ENTRY_ID


@given(st.text(max_size=30))
def test_any_text_is_an_entry_id_or_invalid_argument(text):
    try:
        value = parse_entry_id(text)
    except InvalidArgumentError:
        return
    assert text.isascii() and text.isdigit() and 0 <= value <= MAX_ENTRY_ID and value == int(text)


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=6))
@settings(max_examples=300)
def test_any_vector_is_normalized_or_invalid_argument(values):
    try:
        vector = VALIDATOR.client_vector(values)
    except InvalidArgumentError:
        return
    if not values:
        assert vector is None
        return
    assert vector is not None and vector.shape == (4,) and vector.dtype == np.float32
    assert math.isclose(float(np.linalg.norm(vector)), 1.0, rel_tol=1e-4)


@given(st.text(max_size=80))
def test_any_query_normalizes_or_is_refused(text):
    try:
        normalized = VALIDATOR.query(text, has_embedding=False)
    except (InvalidArgumentError, ResourceExhaustedError):
        return
    assert normalized and len(text.encode("utf-8", "surrogatepass")) <= 64


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_any_cost_is_bounded_or_refused(cost):
    try:
        VALIDATOR.store_fields(b"r", {}, cost, 0, has_vector=True)
    except InvalidArgumentError:
        assert not (math.isfinite(cost) and 0 <= cost <= MAX_COST)
        return
    assert 0 <= cost <= MAX_COST
