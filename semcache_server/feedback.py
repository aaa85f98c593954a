"""Verdicts from traffic: which Lookup a Feedback is about, what a verdict changes, and
what the verdicts say of the served false-hit rate.

Every Lookup is logged in memory under its lookup_id (bounded: the newest
`max_entries`, at most `max_age_seconds` old; a restart forgets them), and the id itself
says, signed, what a hit or an audit needs (semcache_server/lookup_ids.py), so verdicts
on those still count after a restart. A verdict counts once per lookup_id. A hit
reported wrong is never served to that question again (its digest joins the entry's
vetoed questions) and the entry's own similarity floor rises to just above the
similarity it was wrongly served at, so every query at least that far from it misses
too; queries nearer to it still hit. A "correct" verdict changes nothing
but the counts, unless its Lookup was drawn for an audit: then it joins the sample that
moves the namespace's threshold, within the bounds of semcache_server/calibration.py.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import threading
import time
from collections.abc import Callable

from semcache_server.partition import PartitionKey

# How far above a wrong hit's similarity its entry's floor goes.
FLOOR_MARGIN = 0.005
# Vetoed questions kept per entry (the oldest go first).
MAX_VETOES_PER_ENTRY = 64


def question_digest(normalized_query: str, key_suffix: str) -> bytes:
    """The question a verdict is about: normalized text and request key."""
    if not normalized_query:
        return b""
    return hashlib.sha256(f"{normalized_query}\x00{key_suffix}".encode("utf-8", "surrogatepass")).digest()[:16]


def key_bytes(parts: object) -> int:
    """The size of a request key's settings and context (a KeyParts)."""
    settings = getattr(parts, "settings", {})
    context = getattr(parts, "context", ())
    return sum(len(k) + len(v) for k, v in settings.items()) + sum(len(t.role) + len(t.content) for t in context)


def wilson_interval(wrong: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of wrong / total (0, 1 when there is no verdict)."""
    if total <= 0:
        return 0.0, 1.0
    p = wrong / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    spread = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - spread), min(1.0, centre + spread)


@dataclasses.dataclass
class LoggedLookup:
    key: PartitionKey
    query: str
    digest: bytes  # question_digest
    entry_id: int  # the served entry; 0 for a miss
    similarity: float
    vector: bytes  # float32, for an alias of a miss on a server without a model; else b""
    request_key: object  # the KeyParts a miss carried, for an alias; None when too large to keep
    logged_at: float
    judged: bool = False
    # Drawn for an audit: the namespace's (Lookups, eligible Lookups) counted before it,
    # and the entry whose answer is judged (the served one, or a miss's best candidate).
    audit_counts: tuple[int, int] | None = None
    audit_entry_id: int = 0
    audit_verified: bool = False  # the audited hit was served by the verifier
    # The score the decision's verifier gave an audited hit it served (None otherwise: the
    # audit scores its pair anew). The audit keeps this one: int8 scores vary a little
    # with the batch, so a hit served just over the cut could read as just under it.
    audit_score: float | None = None
    from_id: bool = False  # read from a signed lookup id (no query, vector or key), not the log


class LookupLog:
    def __init__(self, max_entries: int = 100_000, max_age_seconds: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._lookups: collections.OrderedDict[str, LoggedLookup] = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, lookup_id: str, lookup: LoggedLookup) -> None:
        with self._lock:
            self._lookups[lookup_id] = lookup
            while len(self._lookups) > self.max_entries:
                self._lookups.popitem(last=False)

    def peek(self, lookup_id: str) -> LoggedLookup | None:
        """The logged Lookup (None: unknown, or over max_age_seconds old)."""
        with self._lock:
            lookup = self._lookups.get(lookup_id)
            if lookup is not None and self._clock() - lookup.logged_at > self.max_age_seconds:
                del self._lookups[lookup_id]
                return None
            return lookup

    def judge(self, lookup_id: str) -> tuple[LoggedLookup | None, bool]:
        """The logged Lookup, and True if this is the first verdict on it (now taken)."""
        lookup = self.peek(lookup_id)
        if lookup is None:
            return None, False
        with self._lock:
            first = not lookup.judged
            lookup.judged = True
            return lookup, first


class RateLimit:
    """A token bucket per namespace: `per_second` verdicts, bursts of twice that."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, namespace: str) -> bool:
        now = self._clock()
        burst = 2 * self.per_second
        with self._lock:
            tokens, at = self._buckets.get(namespace, (burst, now))
            tokens = min(burst, tokens + (now - at) * self.per_second)
            if tokens < 1:
                self._buckets[namespace] = (tokens, now)
                return False
            self._buckets[namespace] = (tokens - 1, now)
            return True


def veto(record: object, digest: bytes, similarity: float) -> None:
    """What a wrong verdict does to an entry record (an EntryRecord, changed in place)."""
    vetoed = record.vetoed_questions  # type: ignore[attr-defined]
    if digest and digest not in vetoed:
        vetoed.append(digest)
        while len(vetoed) > MAX_VETOES_PER_ENTRY:
            del vetoed[0]
    floor = min(similarity + FLOOR_MARGIN, 1.5)  # above 1: only its exact question still hits
    record.min_similarity = max(record.min_similarity, floor)  # type: ignore[attr-defined]
