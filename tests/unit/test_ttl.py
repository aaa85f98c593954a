"""TTL policy: expiry times, expiry checks with sliding extensions, and what a hit moves."""

from __future__ import annotations

from semcache_server import ttl


def test_a_store_takes_its_own_ttl_else_the_default():
    assert ttl.ttl_seconds_for(30, 3600) == 30
    assert ttl.ttl_seconds_for(0, 3600) == 3600
    assert ttl.ttl_seconds_for(0, 0) == 0


def test_no_ttl_means_no_expiry():
    assert ttl.expires_at(1000.0, 0) == 0.0
    assert not ttl.is_expired(0.0, 0.0, now=10**12)


def test_an_entry_expires_at_its_expiry_not_a_moment_later():
    expiry = ttl.expires_at(1000.0, 60)
    assert expiry == 1060.0
    assert not ttl.is_expired(expiry, 0.0, now=1059.999)
    assert ttl.is_expired(expiry, 0.0, now=1060.0)


def test_a_pending_extension_counts_before_it_is_written():
    assert not ttl.is_expired(1060.0, 1100.0, now=1080.0)
    assert ttl.is_expired(1060.0, 1100.0, now=1100.0)
    assert ttl.is_expired(1060.0, 1000.0, now=1070.0)  # an older extension never shortens


def test_only_a_sliding_hit_on_an_entry_with_a_ttl_moves_its_expiry():
    assert ttl.slide(60, True, now=2000.0) == 2060.0
    assert ttl.slide(60, False, now=2000.0) is None
    assert ttl.slide(0, True, now=2000.0) is None


def test_an_extension_is_written_only_where_it_moves_a_stored_expiry_later():
    assert ttl.extension_applies(1060.0, 1100.0)
    assert not ttl.extension_applies(1100.0, 1100.0)
    assert not ttl.extension_applies(1200.0, 1100.0)
    assert not ttl.extension_applies(0.0, 1100.0)  # the entry no longer expires
