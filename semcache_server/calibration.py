"""Thresholds held to max_false_hit_rate by audits of live traffic (issue 19).

The evidence is a uniform sample that the server draws itself: a Lookup that asks for
audits (`audit_rate`) and that was a semantic hit, or whose best semantic candidate
reaches the namespace's floor (its threshold less `adaptive_max_loosening`), is marked
for audit with that probability. The caller judges a marked one: for a hit, was the served answer right;
for a near miss (a best candidate between the floor and the threshold), would that
candidate's answer have been right (the caller computed a fresh one anyway). Verdicts
on unmarked Lookups (complaints) veto entries but are not in this sample, since they
are not a random one.

From the newest `adaptive_window` audits of a namespace (each with the cosine it was,
or would have been, served at) and the share of its Lookups that reached the floor
(counted over every Lookup that asked for audits, weighted to the recent ones: a
Lookup's weight halves after SHARE_HALF_LIFE_LOOKUPS more, since the share grows as the
cache fills and a share over the whole sample lags it):

    false hits per Lookup at threshold t = eligible share * P(served at t and wrong)

where an audit is served at t when its cosine is at least t, or when the verifier or
neighbour agreement served it (a hit under the threshold does not depend on the
threshold: at every t it counts), with P bounded above by the one-sided 95% Wilson bound. The audits
are weighted to the recent ones as well (each one's weight halves after AUDIT_HALF_LIFE
more; the bound uses their effective sample size), since the wrong share among them
grows as the cache fills too. The threshold in force is the
lowest t (on a 0.005 grid, never under the floor) whose bound is at most
max_false_hit_rate, once `adaptive_min_audits` audits are in. Until then, and wherever
no t is certified, the namespace is held strict: at uncertified_min_similarity (the
strict setting, 0.98; its verifier still serves the band under it), or higher where the
audits' point estimate there is over the target, never under the configured threshold.
Before its first audit a namespace serves at the configured one. Holding the
configured threshold while nothing was certified (as before) served what it serves
until a bound came in: on the hwu64 dev stream, 0.7-1.35% wrong over the second half
depending on the stream's order, where the strict hold serves 0.26-0.49% at 2.4-4.8x the
hits of the static threshold that serves as few wrong (bench/README.md, "Feedback").
So every verdict of a flood of false "correct" ones can at most bring the threshold
down to the floor, and that only after adaptive_min_audits of them.

Verdicts are also checked against the server's own judge: each audit keeps the
verifier's judgement of its pair, where the server has a verifier. Honest verdicts call
few of the pairs it judged unlikely (at most IMPLAUSIBLE_SCORE) "correct" (0-12% on the
dev streams; it is calibrated). Where the verdicts call most of them correct (the
one-sided 95% lower bound of that share over IMPLAUSIBLE_CORRECT_SHARE, from
MIN_IMPLAUSIBLE_AUDITS of them on), they are distrusted: the threshold goes to
distrusted_min_similarity (the strict setting), whatever they say, until the window of
audits holds such evidence no more. Stats says so (verdicts_distrusted). A verifier
badly calibrated for the app's traffic can trip it on honest verdicts: the cache then
serves fewer hits, never more wrong ones. The sample persists in LMDB (one meta record a namespace,
written at most once a second and at close: a crash loses at most a second of audits).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import itertools
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from semcache_server.settings import Settings

log = logging.getLogger("semcache")

GRID_STEP = 0.005
PERSIST_INTERVAL_SECONDS = 1.0
# An audit's fresh answer is the same as the cached one when their embeddings' cosine is at least this.
SAME_ANSWER_SIMILARITY = 0.9
# One-sided 95%.
UPPER_Z = 1.645
# Verdicts the verifier contradicts: audits of pairs it judged at most this likely to ask
# the same thing ...
IMPLAUSIBLE_SCORE = 0.2
# ... of which, once there are this many, the verdicts may call "correct" no more than
# this share (its one-sided 95% lower bound); past it the namespace's verdicts are
# distrusted. Honest ones on the dev streams call 0-12% of such pairs correct.
MIN_IMPLAUSIBLE_AUDITS = 10
IMPLAUSIBLE_CORRECT_SHARE = 0.5
# The share of Lookups that reach the floor is counted over every Lookup (no verdict is
# needed for it), weighted to the recent ones: each Lookup's weight halves after this
# many more. The share grows as the cache fills, so a share over the whole sample lags.
SHARE_HALF_LIFE_LOOKUPS = 1000
SHARE_DECAY = 0.5 ** (1.0 / SHARE_HALF_LIFE_LOOKUPS)
# The audits are weighted to the recent ones too: each one's weight halves after this many
# more. The wrong share among them grows as the cache fills (clinc150: the verifier's
# hits from ~1% wrong early to 4-5% late), so the whole window's share lags it.
AUDIT_HALF_LIFE = 250
AUDIT_DECAY = 0.5 ** (1.0 / AUDIT_HALF_LIFE)


def wilson_upper(wrong: float, total: float, z: float = UPPER_Z) -> float:
    """The one-sided upper Wilson score bound of wrong / total (1.0 without evidence);
    weighted counts may be fractional (total: the effective sample size)."""
    if total <= 0:
        return 1.0
    p = wrong / total
    centre = p + z * z / (2 * total)
    spread = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return min(1.0, (centre + spread) / (1 + z * z / total))


def wilson_lower(count: float, total: float, z: float = UPPER_Z) -> float:
    """The one-sided lower Wilson score bound of count / total (0.0 without evidence)."""
    return 1.0 - wilson_upper(total - count, total, z) if total > 0 else 0.0


@dataclasses.dataclass
class Audit:
    similarity: float
    wrong: bool
    lookups_before: int  # the namespace's counted Lookups when this audit was drawn
    eligible_before: int
    verified: bool = False  # a hit the verifier or agreement served under the threshold: served at every threshold
    verifier_score: float = -1.0  # the verifier's judgement of the audited pair (-1: none)


@dataclasses.dataclass
class NamespaceEvidence:
    lookups: int = 0  # Lookups that asked for audits
    eligible: int = 0  # of them, with a best semantic candidate at or above the floor
    audits_total: int = 0
    audits: collections.deque[Audit] = dataclasses.field(default_factory=collections.deque)
    recent_lookups: float = 0.0  # Lookups weighted by SHARE_DECAY per later Lookup
    recent_eligible: float = 0.0

    def count(self, eligible: bool) -> None:
        self.lookups += 1
        self.eligible += eligible
        self.recent_lookups = self.recent_lookups * SHARE_DECAY + 1.0
        self.recent_eligible = self.recent_eligible * SHARE_DECAY + eligible

    def distrusted(self) -> bool:
        """True when the verdicts call "correct" far more of the pairs the verifier judged
        unlikely than it is calibrated for: a flood of false "correct" verdicts (poisoning)."""
        implausible = [a for a in self.audits if 0.0 <= a.verifier_score <= IMPLAUSIBLE_SCORE]
        correct = sum(not a.wrong for a in implausible)
        return (len(implausible) >= MIN_IMPLAUSIBLE_AUDITS
                and wilson_lower(correct, len(implausible)) > IMPLAUSIBLE_CORRECT_SHARE)

    def eligible_share(self) -> float:
        """The share of recent Lookups that reached the floor (1.0 before any)."""
        return self.recent_eligible / self.recent_lookups if self.recent_lookups > 0 else 1.0

    def seed_recent_from_span(self) -> None:
        """A record from before recent counts were kept: they start from the share over
        the sample's span, weighing at most what a steady stream of Lookups would (so one
        new Lookup does not decide the share alone)."""
        first = self.audits[0] if self.audits else Audit(0.0, False, 0, 0)
        lookups = self.lookups - first.lookups_before
        if lookups <= 0:
            return
        self.recent_lookups = min(float(lookups), 1.0 / (1.0 - SHARE_DECAY))
        self.recent_eligible = self.recent_lookups * (self.eligible - first.eligible_before) / lookups

    def bound_at(self, threshold: float) -> tuple[float, float]:
        """(point estimate, upper bound) of false hits per Lookup at this threshold."""
        return self.bounds([threshold])[0]

    def bounds(self, thresholds: Sequence[float]) -> list[tuple[float, float]]:
        """bound_at of each threshold, from one sorted pass over the audits (a Lookup pays
        for this after each new audit, so not once per threshold)."""
        n = len(self.audits)
        if n == 0:
            return [(0.0, 1.0) for _ in thresholds]
        # The newest audit weighs 1, the one before AUDIT_DECAY, ...: geometric sums.
        total = (1.0 - AUDIT_DECAY ** n) / (1.0 - AUDIT_DECAY)
        squares = (1.0 - AUDIT_DECAY ** (2 * n)) / (1.0 - AUDIT_DECAY ** 2)
        effective = total * total / squares  # Kish's effective sample size
        wrong_audits = [(a, AUDIT_DECAY ** (n - 1 - i)) for i, a in enumerate(self.audits) if a.wrong]
        wrong = sorted((a.similarity, w) for a, w in wrong_audits if not a.verified)
        similarities = [s for s, _ in wrong]
        weight_at_or_over = list(itertools.accumulate((w for _, w in reversed(wrong)), initial=0.0))
        wrong_verified = sum(w for a, w in wrong_audits if a.verified)
        share = self.eligible_share()
        out = []
        for threshold in thresholds:
            over = len(similarities) - bisect.bisect_left(similarities, threshold)
            p = (weight_at_or_over[over] + wrong_verified) / total
            out.append((share * p, share * wilson_upper(p * effective, effective)))
        return out


@dataclasses.dataclass(frozen=True)
class Calibrated:
    """What Stats says of a namespace's adaptation."""

    namespace: str
    threshold: float  # in force
    configured_threshold: float
    max_false_hit_rate: float
    audits: int
    wrong_audits: int
    false_hit_rate: float  # wrong answers per Lookup at the threshold in force
    false_hit_rate_upper: float
    audits_total: int
    verdicts_distrusted: bool = False  # the verifier contradicts them: the threshold is distrusted_min_similarity
    certified: bool = False  # the bound at the threshold in force is at most max_false_hit_rate, from enough audits


class Calibration:
    def __init__(
        self, settings: Settings, recovered: Mapping[str, str], persist: Callable[[str, str], None],
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._persist = persist
        self.rng = rng or random.Random()
        self._lock = threading.Lock()
        self._evidence: dict[str, NamespaceEvidence] = {}
        self._thresholds: dict[str, tuple[float, float]] = {}  # namespace -> (configured, in force)
        self._persisted_at: dict[str, float] = {}
        self._dirty: set[str] = set()
        for namespace, data in recovered.items():
            try:
                self._evidence[namespace] = parse_calibration(data, self._window(namespace))
            except ValueError as e:  # the thresholds fall back to the configured ones until audits come in again
                log.warning("namespace %r: its audits could not be read (%s); starting them afresh", namespace, e)

    def _window(self, namespace: str) -> int:
        return int(self._settings.for_namespace(namespace, "adaptive_window"))

    def floor(self, namespace: str, configured: float) -> float:
        return configured - float(self._settings.for_namespace(namespace, "adaptive_max_loosening"))

    def threshold(self, namespace: str, configured: float) -> float:
        """The threshold in force for a namespace whose configured one is `configured`."""
        if self._settings.for_namespace(namespace, "max_false_hit_rate") <= 0:
            return configured
        cached = self._thresholds.get(namespace)
        if cached is not None and cached[0] == configured:
            return cached[1]
        with self._lock:
            adapted = self._adapt(namespace, configured)
            self._thresholds[namespace] = (configured, adapted)
        return adapted

    def sample(
        self, namespace: str, audit_rate: float, best_similarity: float | None, configured: float, *, hit: bool = False,
    ) -> bool:
        """Count a Lookup that asked for audits; True when it is drawn for one. hit: it
        served a semantic hit (eligible wherever its cosine was: the verifier may serve
        under the floor)."""
        eligible = hit or (best_similarity is not None and best_similarity >= self.floor(namespace, configured))
        with self._lock:
            evidence = self._evidence.setdefault(namespace, NamespaceEvidence())
            evidence.count(eligible)
        return eligible and self.rng.random() < audit_rate

    def add(
        self, namespace: str, similarity: float, wrong: bool, lookups_before: int, eligible_before: int,
        verified: bool = False, verifier_score: float = -1.0,
    ) -> None:
        """An audit's verdict (verified: on a hit the verifier served; verifier_score: its
        judgement of the pair, -1 for none); the threshold is worked out again and the
        sample persisted."""
        with self._lock:
            evidence = self._evidence.setdefault(namespace, NamespaceEvidence())
            evidence.audits.append(Audit(similarity, wrong, lookups_before, eligible_before, verified, verifier_score))
            evidence.audits_total += 1
            while len(evidence.audits) > self._window(namespace):
                evidence.audits.popleft()
            self._thresholds.pop(namespace, None)
            self._dirty.add(namespace)
            now = time.monotonic()
            if now - self._persisted_at.get(namespace, 0.0) < PERSIST_INTERVAL_SECONDS:
                return
            self._persisted_at[namespace] = now
        self.flush([namespace])

    def flush(self, namespaces: Iterable[str] | None = None) -> None:
        """Write these namespaces' audits (default: every one with new ones) to LMDB."""
        with self._lock:
            chosen = list(self._dirty if namespaces is None else set(namespaces) & self._dirty)
            self._dirty.difference_update(chosen)
            records = [(namespace, _dump(self._evidence[namespace])) for namespace in chosen]
        for namespace, data in records:
            self._persist(namespace, data)

    def counts(self, namespace: str) -> tuple[int, int]:
        """(Lookups, eligible Lookups) counted so far: what an audit drawn now stands for."""
        with self._lock:
            evidence = self._evidence.get(namespace) or NamespaceEvidence()
            return evidence.lookups, evidence.eligible

    def _adapt(self, namespace: str, configured: float) -> float:
        evidence = self._evidence.get(namespace)
        target = float(self._settings.for_namespace(namespace, "max_false_hit_rate"))
        if evidence is not None and evidence.distrusted():
            return max(configured, self._settings.distrusted_min_similarity)
        if evidence is None or not evidence.audits:
            return configured
        grid = _grid(self.floor(namespace, configured))
        bounds = evidence.bounds(grid)
        if len(evidence.audits) >= int(self._settings.for_namespace(namespace, "adaptive_min_audits")):
            for t, (_, upper) in zip(grid, bounds, strict=True):
                if upper <= target:
                    return t
        # Nothing certified: the uncertified threshold, or higher where the point estimate
        # there is over the target; never looser than the configured one.
        estimated = next(
            (t for t, (estimate, _) in zip(grid, bounds, strict=True) if t >= configured and estimate <= target), grid[-1]
        )
        return max(estimated, float(self._settings.for_namespace(namespace, "uncertified_min_similarity")))

    def report(self, configured_for: Callable[[str], float], allowed: Callable[[str], bool] | None) -> list[Calibrated]:
        """The namespaces with audits (those `allowed` lets through)."""
        out = []
        for namespace in sorted(self._evidence):
            if allowed is not None and not allowed(namespace):
                continue
            configured = configured_for(namespace)
            threshold = self.threshold(namespace, configured)
            with self._lock:
                evidence = self._evidence[namespace]
                estimate, upper = evidence.bound_at(threshold) if evidence.audits else (0.0, 1.0)
                audits, wrong = len(evidence.audits), sum(a.wrong for a in evidence.audits)
                total, distrusted = evidence.audits_total, evidence.distrusted()
            target = float(self._settings.for_namespace(namespace, "max_false_hit_rate"))
            certified = (not distrusted and upper <= target
                         and audits >= int(self._settings.for_namespace(namespace, "adaptive_min_audits")))
            out.append(Calibrated(
                namespace, threshold, configured, target, audits, wrong, estimate, upper, total, distrusted, certified,
            ))
        return out


def _grid(floor: float) -> list[float]:
    steps = max(0, math.ceil((1.0 - floor) / GRID_STEP - 1e-9))
    return [round(floor + i * GRID_STEP, 6) for i in range(steps)] + [1.0]


def _dump(evidence: NamespaceEvidence) -> str:
    return json.dumps({
        "lookups": evidence.lookups, "eligible": evidence.eligible, "audits_total": evidence.audits_total,
        "recent_lookups": round(evidence.recent_lookups, 4), "recent_eligible": round(evidence.recent_eligible, 4),
        "audits": [[round(a.similarity, 6), int(a.wrong), a.lookups_before, a.eligible_before, int(a.verified),
                    round(a.verifier_score, 4)] for a in evidence.audits],
    })


def parse_calibration(data: str, window: int) -> NamespaceEvidence:
    """A persisted sample (as _dump wrote it, or before audits said `verified`: four
    fields, or before recent counts were kept); ValueError if it is not one."""
    try:
        raw: Any = json.loads(data)
        audits = collections.deque((_audit(fields) for fields in raw["audits"]), maxlen=None)
        evidence = NamespaceEvidence(int(raw["lookups"]), int(raw["eligible"]), int(raw["audits_total"]), audits)
        if "recent_lookups" not in raw:
            evidence.seed_recent_from_span()
        else:
            evidence.recent_lookups = float(raw["recent_lookups"])
            evidence.recent_eligible = float(raw["recent_eligible"])
        if not (math.isfinite(evidence.recent_lookups) and 0 <= evidence.recent_eligible <= evidence.recent_lookups):
            raise ValueError("recent counts out of range")
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a calibration record: {e}") from None
    while len(evidence.audits) > window:
        evidence.audits.popleft()
    return evidence


def _audit(fields: Any) -> Audit:
    """Older records have 4 fields (no `verified`) or 5 (no verifier score)."""
    if len(fields) not in (4, 5, 6):
        raise ValueError(f"an audit has 4 to 6 fields, not {len(fields)}")
    similarity, wrong, lookups_before, eligible_before, *rest = fields
    verified = bool(rest[0]) if rest else False
    score = float(rest[1]) if len(rest) > 1 else -1.0
    return Audit(float(similarity), bool(wrong), int(lookups_before), int(eligible_before), verified, score)
