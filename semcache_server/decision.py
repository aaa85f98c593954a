"""The hit decision: given a Lookup's live candidates, best first, is one of them a hit?

This is the one place that decides. In order, for each candidate:

    under its entry's own floor            -> next candidate (wrong verdicts raised it)
    the lexical guard refuses it           -> next candidate (the reason is kept)
    cosine >= threshold, with a verifier, and the candidate is a near copy of the query
      (a few words changed, or reordered) or negates it (cosine_is_blind)
                                        -> kept for the verifier: cosine cannot tell
                                           "Boston to Tampa" from "Tampa to Boston"
    cosine >= threshold, with a verifier and a veto_score
                                        -> the verifier's, which needs only veto_score to
                                           confirm it: cosine alone serves "is it open"
                                           for "is it closed". The first such candidate
                                           (none kept before it) is judged alone at once:
                                           a hit ("threshold_verified"), or vetoed; later
                                           ones are kept
    cosine >= threshold                    -> hit ("threshold")
    band_low <= cosine < threshold         -> kept for the verifier (at most max_verified)
    cosine < band_low                      -> stop

then, if candidates were kept, the verifier judges them against the query (its calibrated
P(same question), from its own score and the cosine). Each kept candidate needs its own
cut: veto_score at or above the threshold, min_verifier_score in the band and for near
copies and negations. Of those that reach it, the best judged is a hit ("threshold_verified"
at or above the threshold, "verifier" in the band), else a miss ("verifier_rejected").
Without a verifier (or band), band_low is the threshold and this is the plain threshold rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from semcache_server.guard import conflict, cosine_is_blind
from semcache_server.v1.records_pb2 import EntryRecord

# Verdict.decided_by (and LookupResponse.decided_by; "exact" is the exact tier's)
EXACT = "exact"
THRESHOLD = "threshold"  # a candidate at or above the threshold that the guard let through
THRESHOLD_VERIFIED = "threshold_verified"  # at or above the threshold, and the verifier did not veto it
VERIFIER = "verifier"  # a candidate in the band that the verifier confirmed
VERIFIER_REJECTED = "verifier_rejected"  # candidates in the band, none confirmed
BELOW_THRESHOLD = "below_threshold"  # the best remaining candidate was under the threshold (or band)
NO_CANDIDATE = "no_candidate"  # none left (every one refused by the guard, or none at all)
CANDIDATE_LIMIT = "candidate_limit"  # max_examined candidates refused: the rest were not read

# Judges each stored query (with its cosine to the Lookup's query) against the Lookup's
# query: P(same question), in order.
Verify = Callable[[Sequence[str], Sequence[float]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A live entry of the Lookup's partition and its cosine similarity to the query."""

    entry_id: int
    record: EntryRecord
    similarity: float


@dataclasses.dataclass(frozen=True)
class DecisionPolicy:
    """threshold: cosine at or above which a candidate is a hit without the verifier.
    band_low: with a verifier, cosine from which candidates below the threshold are
    verified (None: no band). min_verifier_score: the verifier's P(same) a band candidate
    needs. max_verified: candidates scored together in one verifier call, best cosine first
    (a first candidate the veto judged alone, in a call of its own, is not counted).
    veto_score: with a verifier, the P(same) a candidate at or above the threshold needs
    (0: none; cosine alone serves it, as without a verifier)."""

    threshold: float
    band_low: float | None = None
    min_verifier_score: float = 0.5
    max_verified: int = 4
    veto_score: float = 0.0
    # Candidates at or above the floor examined per Lookup at most: where many near
    # duplicates are refused (by the guard, their floors, or the filter upstream), a
    # Lookup gives up (a miss, "candidate_limit") instead of reading every one of them.
    max_examined: int = 64

    @property
    def floor(self) -> float:
        """The lowest cosine any candidate can be a hit at."""
        return self.threshold if self.band_low is None else min(self.band_low, self.threshold)


@dataclasses.dataclass(frozen=True)
class Verdict:
    hit: Candidate | None
    best_similarity: float | None  # the best live candidate's, for misses; None when there was none
    guard_reason: str  # why the guard refused a candidate at or above the floor ("" when none)
    decided_by: str
    verifier_score: float | None = None  # of the hit, or the best verified candidate of a miss
    nearest: Candidate | None = None  # a miss's best live candidate (for audits of near misses)


def decide(
    candidates: Iterable[Candidate], policy: DecisionPolicy, guard_text: str, verify: Verify | None = None
) -> Verdict:
    """The first candidate at or above the threshold that the lexical guard lets through
    (with a veto_score, the best the verifier does not veto), else the band's best verified one.

    candidates: live ones in descending similarity, consumed only as far as needed.
    guard_text: the query, when the lexical guard applies ("" turns it off).
    verify: the verifier bound to the query; None (or no band) decides by cosine alone.
    """
    band_low = policy.floor if verify is not None else policy.threshold
    best: float | None = None
    nearest: Candidate | None = None
    guard_reason = ""
    band: list[Candidate] = []
    vetoable: list[bool] = []  # per kept candidate: judged by veto_score (else min_verifier_score)
    first_vetoed: float | None = None  # the verifier's score of the first candidate it vetoed alone
    stopped_by = NO_CANDIDATE
    for examined, candidate in enumerate(candidates):
        if best is None:
            best, nearest = candidate.similarity, candidate
        if candidate.similarity < band_low:
            stopped_by = BELOW_THRESHOLD
            break
        if examined >= policy.max_examined:
            stopped_by = CANDIDATE_LIMIT
            break
        record = candidate.record
        if candidate.similarity < record.min_similarity:  # the entry's floor, raised by wrong verdicts
            continue
        reason = conflict(guard_text, record.query) if guard_text and record.query else None
        if reason is not None:
            guard_reason = guard_reason or reason
            continue
        veto_only = False  # kept at or above the threshold, where only the verifier's veto refuses it
        if candidate.similarity >= policy.threshold:
            verifiable = verify is not None and bool(record.query)
            if not (verifiable and guard_text and cosine_is_blind(guard_text, record.query)):
                if not verifiable or policy.veto_score <= 0.0:
                    return Verdict(candidate, best, guard_reason, THRESHOLD)
                veto_only = True
                if not band and first_vetoed is None:  # the best so far: judged alone, one pair (most Lookups stop here)
                    assert verify is not None
                    score = float(verify([record.query], [candidate.similarity])[0])
                    if score >= policy.veto_score:
                        return Verdict(candidate, best, guard_reason, THRESHOLD_VERIFIED, score)
                    first_vetoed = score
                    continue
        band.append(candidate)
        vetoable.append(veto_only)
        if len(band) >= policy.max_verified:
            break
    if band and verify is not None:
        scores = np.asarray(verify([c.record.query for c in band], [c.similarity for c in band]), dtype=np.float64)
        cuts = np.array([policy.veto_score if v else policy.min_verifier_score for v in vetoable])
        passed = scores >= cuts
        if passed.any():
            chosen = int(np.argmax(np.where(passed, scores, -np.inf)))
            how = THRESHOLD_VERIFIED if vetoable[chosen] else VERIFIER
            return Verdict(band[chosen], best, guard_reason, how, float(scores[chosen]))
        return Verdict(None, best, guard_reason, VERIFIER_REJECTED, max(float(scores.max()), first_vetoed or 0.0), nearest)
    if first_vetoed is not None:
        return Verdict(None, best, guard_reason, VERIFIER_REJECTED, first_vetoed, nearest)
    return Verdict(None, best, guard_reason, stopped_by, nearest=nearest)
