"""Stats: counters, entries and bytes for the server or for a filter of partitions."""

from __future__ import annotations

from collections.abc import Callable

from semcache_server.entries import COUNTERS, PartitionStatsView, StatsView
from semcache_server.ledger import Ledger
from semcache_server.partition_registry import PartitionRegistry
from semcache_server.v1.records_pb2 import PartitionRecord


def stats_view(
    registry: PartitionRegistry,
    ledger: Ledger,
    namespace: str | None = None,
    model: str = "",
    version: str = "",
    *,
    allowed: Callable[[str], bool] | None = None,
    listed: int | None = None,
    damaged_entries: int = 0,
) -> StatsView:
    """Counters for the server (namespace None) or for partitions matching the filter.

    With `allowed`, only partitions of namespaces it accepts are seen, and the
    totals are their sums (the server totals would tell about other tenants).
    `listed`: at most this many partitions in the view's list (None: all), so a
    server with a namespace per tenant neither copies every partition's record
    under the lock Lookups need nor sends them all.
    """
    if namespace is None:
        candidates = registry.all()
    elif model:
        candidates = registry.versions(namespace, model)
    else:
        candidates = registry.in_namespace(namespace)
    selected = [
        p for p in candidates
        if (not version or p.key.version == version) and (allowed is None or allowed(p.key.namespace))
    ]
    # Sorted only when listed: a scrape and the start-up line list none.
    shown = [] if listed == 0 else sorted(selected, key=lambda p: p.key)[:listed]
    with ledger.lock:
        views = [
            PartitionStatsView(p.key, len(p.index), p.bytes, PartitionRecord.FromString(p.record.SerializeToString()))
            for p in shown
        ]
        if namespace is None and allowed is None:
            totals = PartitionRecord.FromString(ledger.totals.SerializeToString())
        else:
            totals = PartitionRecord()
            for p in selected:
                record = p.record
                for name in COUNTERS:
                    setattr(totals, name, getattr(totals, name) + getattr(record, name))
    return StatsView(
        entries=sum(len(p.index) for p in selected), bytes=sum(p.bytes for p in selected), totals=totals,
        partitions=views, partitions_total=len(selected), damaged_entries=damaged_entries,
    )
