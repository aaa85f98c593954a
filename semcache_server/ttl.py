"""TTL policy, pure: how long an entry lives, when it has expired, how a hit extends it.

An entry with `expires_at` 0 never expires. With sliding TTL a hit moves the expiry to
now + ttl_seconds; until the extension reaches LMDB (the stats flush) it is held in
memory and counts as if it had.
"""

from __future__ import annotations


def ttl_seconds_for(requested_ttl_seconds: int, default_ttl_seconds: int) -> int:
    """A Store's TTL: its own, else its namespace's (or the server's) default; 0 = none."""
    return requested_ttl_seconds or default_ttl_seconds


def expires_at(created_at: float, ttl_seconds: int) -> float:
    """The entry's expiry time; 0.0 when it never expires."""
    return created_at + ttl_seconds if ttl_seconds else 0.0


def is_expired(expires_at: float, extended_to: float, now: float) -> bool:
    """extended_to: a sliding extension not yet written to the record (0.0: none)."""
    if expires_at == 0:
        return False
    return max(expires_at, extended_to) <= now


def slide(ttl_seconds: int, sliding: bool, now: float) -> float | None:
    """The new expiry after a hit, or None when the hit does not move it."""
    if ttl_seconds and sliding:
        return now + ttl_seconds
    return None


def extension_applies(stored_expires_at: float, extended_to: float) -> bool:
    """Whether a pending extension still moves a stored expiry (that has one) later."""
    return bool(stored_expires_at) and stored_expires_at < extended_to
