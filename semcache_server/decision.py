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

Last, neighbour agreement (agreement_neighbours > 0): a Lookup that none of the above
serves is a hit ("agreement") on its nearest live candidate when its agreement_neighbours
nearest live candidates (the guard and their floors passed) all hold one response, byte
for byte, each at cosine >= agreement_min_similarity, the verifier judged none of them
more likely another question than the same (under AGREEMENT_MIN_JUDGEMENT, where it was
asked: a reordering it caught stays caught), and no live candidate that holds another
response comes within agreement_margin of the nearest. Several stored questions with one
answer around a query vote for that answer: a kNN vote, where one neighbour's cosine would
be too weak a sign. It serves only where the app stores byte-identical answers for
different questions (FAQ and routing answers, templated replies, aliases the judge made).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence

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
AGREEMENT = "agreement"  # none of the above, but the nearest live candidates agree on one response
# The hit paths under the threshold, which serve whatever the threshold is
UNDER_THRESHOLD_HITS = (VERIFIER, AGREEMENT)
# Neighbours agree in vain on a candidate the verifier judged under this (P(same question))
AGREEMENT_MIN_JUDGEMENT = 0.5

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
    (0: none; cosine alone serves it, as without a verifier). agreement_neighbours,
    agreement_min_similarity, agreement_margin: neighbour agreement (0 neighbours: off; see
    the module's docstring)."""

    threshold: float
    band_low: float | None = None
    min_verifier_score: float = 0.5
    max_verified: int = 4
    veto_score: float = 0.0
    # Candidates at or above the floor examined per Lookup at most: where many near
    # duplicates are refused (by the guard, their floors, or the filter upstream), a
    # Lookup gives up (a miss, "candidate_limit") instead of reading every one of them.
    max_examined: int = 64
    agreement_neighbours: int = 0
    agreement_min_similarity: float = 1.0
    agreement_margin: float = 0.0

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
    (with a veto_score, the best the verifier does not veto), else the band's best verified
    one, else (with agreement_neighbours) the nearest live one its neighbours agree with.

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
    judged: dict[int, float] = {}  # entry id -> the verifier's score, of the candidates it was asked about
    live: list[Candidate] = []  # the candidates read that can answer (the guard and their floors passed)
    stream = iter(candidates)
    unread: list[Candidate] = []  # the candidate under band_low that ended the loop: agreement reads on from it
    read = 0
    stopped_by = NO_CANDIDATE
    for candidate in stream:
        if best is None:
            best, nearest = candidate.similarity, candidate
        if candidate.similarity < band_low:
            stopped_by = BELOW_THRESHOLD
            unread.append(candidate)
            break
        if read >= policy.max_examined:
            stopped_by = CANDIDATE_LIMIT
            break
        read += 1
        reason = _refusal(candidate, guard_text)
        if reason is not None:
            guard_reason = guard_reason or reason
            continue
        live.append(candidate)
        record = candidate.record
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
                    first_vetoed = judged[candidate.entry_id] = score
                    continue
        band.append(candidate)
        vetoable.append(veto_only)
        if len(band) >= policy.max_verified:
            break
    verdict = Verdict(None, best, guard_reason, stopped_by, nearest=nearest)
    if band and verify is not None:
        scores = np.asarray(verify([c.record.query for c in band], [c.similarity for c in band]), dtype=np.float64)
        judged.update(zip((c.entry_id for c in band), scores.tolist(), strict=True))
        cuts = np.array([policy.veto_score if v else policy.min_verifier_score for v in vetoable])
        passed = scores >= cuts
        if passed.any():
            chosen = int(np.argmax(np.where(passed, scores, -np.inf)))
            how = THRESHOLD_VERIFIED if vetoable[chosen] else VERIFIER
            return Verdict(band[chosen], best, guard_reason, how, float(scores[chosen]))
        verdict = Verdict(None, best, guard_reason, VERIFIER_REJECTED, max(float(scores.max()), first_vetoed or 0.0), nearest)
    elif first_vetoed is not None:
        verdict = Verdict(None, best, guard_reason, VERIFIER_REJECTED, first_vetoed, nearest)
    if policy.agreement_neighbours > 0 and stopped_by != CANDIDATE_LIMIT:
        agreed = _agreed(live, itertools.chain(unread, stream), policy, guard_text, policy.max_examined - read, judged)
        if agreed is not None:
            return Verdict(agreed, best, guard_reason, AGREEMENT)
    return verdict


def _refusal(candidate: Candidate, guard_text: str) -> str | None:
    """Why the candidate cannot answer this Lookup: "" under its entry's own floor (wrong
    verdicts raised it), the guard's reason; None when it can."""
    record = candidate.record
    if candidate.similarity < record.min_similarity:
        return ""
    return conflict(guard_text, record.query) if guard_text and record.query else None


def _agreed(
    live: list[Candidate], rest: Iterator[Candidate], policy: DecisionPolicy, guard_text: str, budget: int,
    judged: dict[int, float],
) -> Candidate | None:
    """The nearest live candidate where its neighbours agree on its response (see the
    module's docstring), reading on from `rest` (at most `budget` more candidates); else None.
    judged: the verifier's scores of the candidates it was asked about, by entry id."""
    need = policy.agreement_neighbours
    window = list(live)
    for candidate in rest:
        if len(window) >= need and candidate.similarity <= window[0].similarity - policy.agreement_margin:
            break  # no later one can come within the margin
        if len(window) < need and candidate.similarity < policy.agreement_min_similarity:
            return None
        if budget <= 0:
            return None
        budget -= 1
        if _refusal(candidate, guard_text) is None:
            window.append(candidate)
    if len(window) < need:
        return None
    nearest, agreeing = window[0], window[:need]
    response = nearest.record.response
    if not response or agreeing[-1].similarity < policy.agreement_min_similarity:
        return None
    if any(c.record.response != response for c in agreeing):
        return None
    if any(c.record.response != response and c.similarity > nearest.similarity - policy.agreement_margin for c in window):
        return None
    if any(judged.get(c.entry_id, 1.0) < AGREEMENT_MIN_JUDGEMENT for c in agreeing):
        return None
    return nearest
