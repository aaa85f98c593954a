"""What the engine hands back: lookup and store results, Stats views, entry sizes and ids."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from semcache_server.key_fingerprint import NO_KEY, KeyParts
from semcache_server.partition import PartitionKey
from semcache_server.v1.records_pb2 import EntryRecord, PartitionRecord

# PartitionRecord counters, summed for totals and shown in Stats.
COUNTERS = (
    "lookups", "hits", "exact_hits", "semantic_hits", "misses", "saved_cost",
    "evictions", "expirations", "invalidations", "verdicts_correct", "verdicts_wrong",
)


@dataclasses.dataclass(frozen=True)
class LookupResult:
    hit: bool
    threshold: float
    resolved_version: str
    entry_id: str = ""
    response: bytes = b""
    # Of the match, or on a miss of the best candidate; None when there was none.
    similarity: float | None = None
    matched_query: str = ""
    exact: bool = False
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # On a miss: why the guard refused a candidate at or above the threshold.
    guard_reason: str = ""
    decided_by: str = ""  # see semcache_server.decision
    verifier_score: float | None = None
    # Single flight: the lease this caller holds (a leased miss), or, on a hit answered
    # from another caller's lease, how long this Lookup waited for it.
    lease_id: str = ""
    coalesced: bool = False
    waited_ms: int = 0
    lookup_id: str = ""  # for Feedback
    # Drawn for an audit (semcache_server/calibration.py): for a miss, the best candidate's
    # entry and response, which the caller compares with its fresh answer.
    audit: bool = False
    audit_entry_id: str = ""
    audit_response: bytes = b""
    # A miss's best candidate within the Lookup's near_miss_band under the threshold, for
    # the app's judge (see semcache_server/audits.py).
    near_miss_entry_id: str = ""
    near_miss_query: str = ""
    near_miss_response: bytes = b""
    nearest: Any = dataclasses.field(default=None, compare=False, repr=False)  # a miss's best Candidate


@dataclasses.dataclass(frozen=True)
class FeedbackResult:
    counted: bool  # False: a verdict on this lookup was already counted
    vetoed: bool = False
    alias_entry_id: str = ""


@dataclasses.dataclass(frozen=True)
class StoreResult:
    entry_id: str
    replaced: bool
    expires_at: float
    resolved_version: str


@dataclasses.dataclass(frozen=True)
class StoreItem:
    """One entry of a store_batch call."""

    key: PartitionKey
    query: str
    response: bytes
    embedding: Sequence[float] | np.ndarray | None = None
    ttl_seconds: int = 0
    metadata: Mapping[str, str] | None = None
    cost: float = 0.0
    request_key: KeyParts = NO_KEY
    lease_id: str = ""


@dataclasses.dataclass
class PartitionStatsView:
    key: PartitionKey
    entries: int
    bytes: int
    record: PartitionRecord


@dataclasses.dataclass
class StatsView:
    entries: int
    bytes: int
    totals: PartitionRecord
    partitions: list[PartitionStatsView]  # the first `listed` of the matching ones, in key order
    partitions_total: int  # how many partitions matched
    damaged_entries: int = 0  # server-wide: entry records found damaged since start


def entry_bytes(record: EntryRecord) -> int:
    """What an entry counts against byte budgets: query + response + vector + metadata."""
    metadata = sum(len(k.encode()) + len(v.encode()) for k, v in record.metadata.items())
    vectors = len(record.embedding) + len(record.context_embedding)
    return len(record.query.encode("utf-8", "surrogatepass")) + len(record.response) + vectors + metadata


def format_entry_id(entry_id: int) -> str:
    return str(entry_id)
