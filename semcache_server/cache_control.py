"""Per-request cache control, after HTTP's Cache-Control request directives (see the
README): no_store (no-store), refresh (no-cache), max_age_seconds (max-age)."""

from __future__ import annotations

import dataclasses

REFRESH = "refresh"  # LookupResponse.decided_by of a Lookup that skipped the cache


@dataclasses.dataclass(frozen=True)
class CacheControl:
    # The caller will not store what it computes: no lease is taken for it.
    no_store: bool = False
    # Skip the lookup (a miss), so the caller computes afresh and stores over the old answer.
    refresh: bool = False
    # Only entries stored at most this many seconds ago may answer; None = any age.
    max_age_seconds: int | None = None

    def min_created_at(self, now: float) -> float:
        """Entries created before this (Unix seconds) are too old to answer."""
        return 0.0 if self.max_age_seconds is None else now - self.max_age_seconds


DEFAULT_CONTROL = CacheControl()
