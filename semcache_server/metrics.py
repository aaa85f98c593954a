"""Prometheus metrics, in a registry of the server's own (no process-wide globals)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from semcache_server.entries import StatsView

# Seconds; a semantic lookup is ~1-20 ms, an exact hit well under 1 ms.
_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


# The namespace label of every namespace past Metrics.max_namespaces.
OTHER_NAMESPACES = "_other"


class Metrics:
    """What the cache reports as it works; the rest is read from Stats at scrape time.

    Series labelled by namespace stop at max_namespaces distinct namespaces (0: no
    limit); later ones are counted under namespace="_other". A namespace per tenant
    would otherwise put thousands of series into every scrape.
    """

    def __init__(self, max_namespaces: int = 100) -> None:
        self.max_namespaces = max_namespaces
        self._labelled_namespaces: set[str] = set()
        self.registry = CollectorRegistry(auto_describe=True)
        self.lookups = Counter(
            "semcache_lookups", "Lookups by namespace and result (exact_hit, semantic_hit, miss).",
            ["namespace", "result"], registry=self.registry,
        )
        self.stores = Counter("semcache_stores", "Stores by namespace.", ["namespace"], registry=self.registry)
        self.lookup_seconds = Histogram(
            "semcache_lookup_seconds", "Whole Lookup inside the server.", buckets=_LATENCY_BUCKETS, registry=self.registry
        )
        self.embed_seconds = Histogram(
            "semcache_embed_seconds", "Embedding model calls.", buckets=_LATENCY_BUCKETS, registry=self.registry
        )
        self.embed_batch_size = Histogram(
            "semcache_embed_batch_size", "Texts per embedding model call made for concurrent requests.",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry,
        )
        self.near_miss_judge = Counter(
            "semcache_near_miss_judge", "Near misses the webhook judge settled, by result (confirmed, refused, "
            "failed, dropped, alias_failed).", ["result"], registry=self.registry,
        )
        self.verifier_seconds = Histogram(
            "semcache_verifier_seconds", "Verifier calls (the gray band's candidates of one Lookup).",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.search_seconds = Histogram(
            "semcache_search_seconds", "FAISS searches.", buckets=_LATENCY_BUCKETS, registry=self.registry
        )
        shed = Counter(
            "semcache_requests_shed",
            "Requests answered without doing their work: overloaded (grpc_workers already in progress, "
            "RESOURCE_EXHAUSTED) or deadline (the caller's deadline passed before the model ran, DEADLINE_EXCEEDED).",
            ["reason"], registry=self.registry,
        )
        self.shed_overloaded = shed.labels("overloaded")
        self.shed_deadline = shed.labels("deadline")
        # labels() takes a lock and builds a key per call (~2 us); every Lookup and Store
        # counts one, so the labelled children are kept here, one per (namespace, result).
        self._lookup_counters: dict[tuple[str, ...], Counter] = {}
        self._store_counters: dict[tuple[str, ...], Counter] = {}

    def _namespace_label(self, namespace: str) -> str:
        if namespace in self._labelled_namespaces:
            return namespace
        if self.max_namespaces and len(self._labelled_namespaces) >= self.max_namespaces:
            return OTHER_NAMESPACES
        self._labelled_namespaces.add(namespace)
        return namespace

    def _child(self, children: dict[tuple[str, ...], Counter], metric: Counter, namespace: str, *labels: str) -> Counter:
        """metric's child for (namespace's label, *labels), kept per label, so namespaces
        past the limit add no entry to `children`."""
        child = children.get((namespace, *labels))
        if child is None:
            key = (self._namespace_label(namespace), *labels)
            child = children.get(key)
            if child is None:
                child = children[key] = metric.labels(*key)
        return child

    def observe_lookup(self, namespace: str, result: str, seconds: float) -> None:
        self._child(self._lookup_counters, self.lookups, namespace, result).inc()
        self.lookup_seconds.observe(seconds)

    def count_stores(self, namespace: str, count: int = 1) -> None:
        self._child(self._store_counters, self.stores, namespace).inc(count)

    def count_judged(self, result: str) -> None:
        """One outcome of the webhook judge of near misses (semcache_server/near_miss_judge.py)."""
        self.near_miss_judge.labels(result).inc()

    def watch(
        self, stats: Callable[[], StatsView], store_commits: Callable[[], int],
        leases: Callable[[], Mapping[str, int]] | None = None, calibrations: Callable[[], Sequence[Any]] | None = None,
    ) -> None:
        """Expose entries, bytes and the persisted removal and saved-cost totals from `stats`,
        the LMDB commits of Stores from `store_commits`, the single-flight counters from
        `leases` (active, granted, coalesced, expired, refused_waits), and each audited
        namespace's threshold and false-hit bound from `calibrations`, read at each scrape."""
        self.registry.register(_StatsCollector(
            stats, store_commits, leases or (lambda: {}), calibrations or (lambda: []), self.max_namespaces,
        ))


_LEASE_COUNTERS = (
    ("leases_granted", "Single-flight leases granted (leased misses that computed)."),
    ("leases_coalesced", "Leased Lookups answered from another caller's lease, after waiting for its Store."),
    ("leases_expired", "Leases whose holder never stored within lease_seconds."),
    ("leases_refused_waits", "Leased Lookups that could not wait (max_lease_waiters already waiting): they computed."),
)


class _StatsCollector(Collector):
    def __init__(
        self, stats: Callable[[], StatsView], store_commits: Callable[[], int], leases: Callable[[], Mapping[str, int]],
        calibrations: Callable[[], Sequence[Any]], max_namespaces: int,
    ) -> None:
        self._stats = stats
        self._store_commits = store_commits
        self._leases = leases
        self._calibrations = calibrations
        self._max_namespaces = max_namespaces

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        view = self._stats()
        yield GaugeMetricFamily("semcache_entries", "Entries stored.", value=view.entries)
        yield GaugeMetricFamily(
            "semcache_bytes", "Bytes counted against budgets (query+response+vector+metadata).", value=view.bytes
        )
        yield GaugeMetricFamily("semcache_partitions", "Live partitions.", value=view.partitions_total)
        for name, help_text in (
            ("evictions", "Entries removed by the LFU policy."),
            ("expirations", "Entries removed because their TTL ran out."),
            ("invalidations", "Entries removed by Invalidate or version retirement."),
            ("saved_cost", "Sum of the cost of every hit's entry."),
        ):
            yield CounterMetricFamily(f"semcache_{name}", help_text, value=getattr(view.totals, name))
        verdicts = CounterMetricFamily("semcache_verdicts", "Feedback verdicts on served hits.", labels=["verdict"])
        verdicts.add_metric(["correct"], view.totals.verdicts_correct)
        verdicts.add_metric(["wrong"], view.totals.verdicts_wrong)
        yield verdicts
        yield CounterMetricFamily(
            "semcache_damaged_entries", "Entry records found damaged (checksum or parse); never served.",
            value=view.damaged_entries,
        )
        yield CounterMetricFamily(
            "semcache_store_commits", "LMDB transactions that committed Stores (stores / commits = group-commit size).",
            value=self._store_commits(),
        )
        leases = self._leases()
        if leases:
            yield GaugeMetricFamily("semcache_leases_active", "Single-flight leases held now.", value=leases["active"])
            for name, help_text in _LEASE_COUNTERS:
                yield CounterMetricFamily(f"semcache_{name}", help_text, value=leases[name.removeprefix("leases_")])

        yield from self._calibration_metrics()

    def _calibration_metrics(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Per audited namespace (the first metrics_max_namespaces; 0 = all): see semcache_server/calibration.py."""
        calibrations = list(self._calibrations())
        if self._max_namespaces:
            calibrations = calibrations[: self._max_namespaces]
        if not calibrations:
            return
        threshold = GaugeMetricFamily(
            "semcache_threshold", "The threshold in force (audits move it).", labels=["namespace"],
        )
        upper = GaugeMetricFamily(
            "semcache_false_hit_rate_upper", "95% upper bound of wrong answers per Lookup at that threshold.",
            labels=["namespace"],
        )
        audits = CounterMetricFamily(
            "semcache_audits", "Audits taken (each cost its caller one model call).", labels=["namespace"],
        )
        distrusted = GaugeMetricFamily(
            "semcache_verdicts_distrusted", "1 while the verifier contradicts the namespace's verdicts (poisoning).",
            labels=["namespace"],
        )
        certified = GaugeMetricFamily(
            "semcache_threshold_certified",
            "1 while the bound at the threshold in force is at most max_false_hit_rate; 0: held strict for want of audits.",
            labels=["namespace"],
        )
        for c in calibrations:
            threshold.add_metric([c.namespace], c.threshold)
            upper.add_metric([c.namespace], c.false_hit_rate_upper)
            audits.add_metric([c.namespace], c.audits_total)
            distrusted.add_metric([c.namespace], float(c.verdicts_distrusted))
            certified.add_metric([c.namespace], float(c.certified))
        yield from (threshold, upper, audits, distrusted, certified)

    def describe(self) -> Iterator:
        return iter(())
