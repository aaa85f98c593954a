"""The hit decision, table-driven: each row says why the verdict is what it is."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from semcache_server.decision import (
    AGREEMENT,
    BELOW_THRESHOLD,
    NO_CANDIDATE,
    THRESHOLD,
    THRESHOLD_VERIFIED,
    VERIFIER,
    VERIFIER_REJECTED,
    Candidate,
    DecisionPolicy,
    decide,
)
from semcache_server.v1.records_pb2 import EntryRecord


def _candidate(entry_id: int, query: str, similarity: float) -> Candidate:
    return Candidate(entry_id, EntryRecord(query=query), similarity)


PORT_OPEN = _candidate(1, "is port 22 open", 0.95)
PORT_CLOSED = _candidate(2, "is port 22 closed", 0.94)
RESET = _candidate(3, "how do I reset my password", 0.93)
PORT_OPEN_NOW = _candidate(6, "is port 22 open right now", 0.93)
FAR = _candidate(4, "what is the weather in Tampa", 0.40)


@pytest.mark.parametrize(
    "reason,candidates,threshold,guard_text,hit,best,guard_reason,decided_by",
    [
        ("no candidates at all", [], 0.9, "q", None, None, "", NO_CANDIDATE),
        ("the best is at the threshold: a hit", [RESET], 0.93, "", 3, 0.93, "", THRESHOLD),
        ("the best is under the threshold: a miss that still reports it", [FAR], 0.9, "", None, 0.40, "", BELOW_THRESHOLD),
        ("the guard refuses the best, the next one is the answer",
         [PORT_CLOSED, PORT_OPEN_NOW], 0.9, "is port 22 open", 6, 0.94, "opposites: open/closed", THRESHOLD),
        ("every refusal is tried past; the first reason is the one reported",
         [PORT_CLOSED, RESET, PORT_OPEN_NOW], 0.9, "is port 22 open", 6, 0.94, "opposites: open/closed", THRESHOLD),
        ("the guard refuses the best and the rest are under the threshold",
         [PORT_CLOSED, FAR], 0.9, "is port 22 open", None, 0.94, "opposites: open/closed", BELOW_THRESHOLD),
        ("the guard refuses every candidate", [PORT_CLOSED], 0.9, "is port 22 open", None, 0.94,
         "opposites: open/closed", NO_CANDIDATE),
        ("no guard text: the guard is off", [PORT_CLOSED], 0.9, "", 2, 0.94, "", THRESHOLD),
        ("a candidate without a stored query is not guarded", [_candidate(5, "", 0.97)], 0.9, "is port 22 open",
         5, 0.97, "", THRESHOLD),
        ("the same question passes the guard", [PORT_OPEN], 0.9, "is port 22 open", 1, 0.95, "", THRESHOLD),
    ],
)
def test_decide(reason, candidates, threshold, guard_text, hit, best, guard_reason, decided_by):
    verdict = decide(candidates, DecisionPolicy(threshold), guard_text)
    assert (verdict.hit.entry_id if verdict.hit else None) == hit, reason
    assert verdict.best_similarity == best, reason
    assert verdict.guard_reason == guard_reason, reason
    assert verdict.decided_by == decided_by, reason


def test_decide_reads_no_further_than_it_needs():
    read: list[int] = []

    def stream() -> Iterator[Candidate]:
        for candidate in (RESET, PORT_OPEN, FAR):
            read.append(candidate.entry_id)
            yield candidate

    assert decide(stream(), DecisionPolicy(0.9), "").hit is RESET
    assert read == [3]  # the storage fetches more candidates only when they are needed


# -- the gray band: candidates under the threshold that the verifier decides -------------

RETURN_ITEM = _candidate(10, "how do I return an item", 0.86)
RETURN_POLICY = _candidate(11, "what is your return policy", 0.84)
REFUND_TIME = _candidate(12, "how long does a refund take", 0.81)
WEATHER = _candidate(13, "weather in boston", 0.60)
BAND = DecisionPolicy(threshold=0.9, band_low=0.8, min_verifier_score=0.5, max_verified=2)
SCORES = {
    "how do I return an item": 0.2, "what is your return policy": 0.9, "how long does a refund take": 0.95,
    "flights from tampa to boston": 0.05, "flights from boston to tampa tomorrow": 0.9,
    "my card has not arrived yet": 0.05,
    "how do I reset my password": 0.7, "is the store open on sundays": 0.1,
    "flight from tampa to boston please": 0.9, "tampa to boston flights": 0.9,
}


# With a veto_score, candidates at or above the threshold are verified too.
VETO = dataclasses.replace(BAND, veto_score=0.5)
STORE_OPEN = _candidate(40, "is the store open on sundays", 0.96)  # the verifier says 0.1: another question


def _verify(asked: list[list[str]]):  # type: ignore[no-untyped-def]
    def verify(texts, similarities):  # type: ignore[no-untyped-def]
        assert len(similarities) == len(texts)
        asked.append(list(texts))
        import numpy as np

        return np.array([SCORES[t] for t in texts])

    return verify


@pytest.mark.parametrize(
    "reason,candidates,policy,hit,decided_by,score,asked",
    [
        ("above the threshold: a hit without asking the verifier",
         [RESET, RETURN_ITEM], BAND, 3, THRESHOLD, None, []),
        ("the best verified band candidate wins, not the best cosine",
         [RETURN_ITEM, RETURN_POLICY], BAND, 11, VERIFIER, 0.9, [["how do I return an item", "what is your return policy"]]),
        ("at most max_verified band candidates are scored",
         [RETURN_ITEM, RETURN_POLICY, REFUND_TIME], BAND, 11, VERIFIER, 0.9,
         [["how do I return an item", "what is your return policy"]]),
        ("with max_verified = 1 only the best band candidate is scored, even when the next one would pass",
         [RETURN_ITEM, RETURN_POLICY], dataclasses.replace(BAND, max_verified=1), None, VERIFIER_REJECTED, 0.2,
         [["how do I return an item"]]),
        ("no band candidate reaches the score: a miss",
         [RETURN_ITEM, WEATHER], BAND, None, VERIFIER_REJECTED, 0.2, [["how do I return an item"]]),
        ("a stricter score rejects what a looser one accepts",
         [RETURN_POLICY], DecisionPolicy(0.9, 0.8, min_verifier_score=0.95), None, VERIFIER_REJECTED, 0.9,
         [["what is your return policy"]]),
        ("below the band: a miss, and the verifier is not asked", [WEATHER], BAND, None, BELOW_THRESHOLD, None, []),
        ("no band: the plain threshold", [RETURN_POLICY], DecisionPolicy(0.9), None, BELOW_THRESHOLD, None, []),
        ("above the threshold, the verifier confirms at the veto score",
         [RESET], VETO, 3, THRESHOLD_VERIFIED, 0.7, [["how do I reset my password"]]),
        ("above the threshold, under the veto score: refused, a miss",
         [STORE_OPEN], VETO, None, VERIFIER_REJECTED, 0.1, [["is the store open on sundays"]]),
        ("the best candidate is judged alone first; vetoed, it gives way to a confirmed one in the band",
         [STORE_OPEN, RETURN_POLICY], VETO, 11, VERIFIER, 0.9,
         [["is the store open on sundays"], ["what is your return policy"]]),
        ("confirmed alone, the best candidate is the hit and nothing more is scored",
         [RESET, RETURN_POLICY], dataclasses.replace(VETO, min_verifier_score=0.95), 3, THRESHOLD_VERIFIED, 0.7,
         [["how do I reset my password"]]),
        ("each candidate is held to its own cut: vetoed at 0.8, a band candidate passes 0.5",
         [RESET, RETURN_POLICY], dataclasses.replace(VETO, veto_score=0.8), 11, VERIFIER, 0.9,
         [["how do I reset my password"], ["what is your return policy"]]),
        ("a second candidate above the threshold is held to the veto score too",
         [STORE_OPEN, _candidate(41, "how do I reset my password", 0.93)], VETO, 41, THRESHOLD_VERIFIED, 0.7,
         [["is the store open on sundays"], ["how do I reset my password"]]),
        ("every candidate vetoed or rejected: a miss reporting the best score seen",
         [STORE_OPEN, RETURN_ITEM], VETO, None, VERIFIER_REJECTED, 0.2,
         [["is the store open on sundays"], ["how do I return an item"]]),
        ("veto_score 0: cosine alone serves above the threshold, as before",
         [STORE_OPEN], dataclasses.replace(VETO, veto_score=0.0), 40, THRESHOLD, None, []),
    ],
)
def test_decide_with_a_verifier(reason, candidates, policy, hit, decided_by, score, asked):
    calls: list[list[str]] = []
    verdict = decide(candidates, policy, "", _verify(calls))
    assert (verdict.hit.entry_id if verdict.hit else None) == hit, reason
    assert verdict.decided_by == decided_by, reason
    assert verdict.verifier_score == (pytest.approx(score) if score is not None else None), reason
    assert calls == asked, reason


def test_the_guard_still_refuses_inside_the_band():
    calls: list[list[str]] = []
    port_closed = _candidate(20, "is port 22 closed", 0.85)
    verdict = decide([port_closed], BAND, "is port 22 open", _verify(calls))
    assert verdict.hit is None and verdict.guard_reason == "opposites: open/closed" and calls == []


def test_without_a_verifier_a_band_changes_nothing():
    assert decide([RETURN_POLICY], BAND, "", None).decided_by == BELOW_THRESHOLD


# -- word order: above the threshold, a reordering of the query is the verifier's to decide ---

TAMPA_TO_BOSTON = _candidate(30, "flights from tampa to boston", 0.97)
BOSTON_TO_TAMPA = _candidate(31, "flights from boston to tampa tomorrow", 0.95)


def test_a_reordering_above_the_threshold_is_verified_and_can_be_rejected():
    calls: list[list[str]] = []
    verdict = decide([TAMPA_TO_BOSTON], BAND, "flights from boston to tampa", _verify(calls))
    assert verdict.hit is None and verdict.decided_by == VERIFIER_REJECTED
    assert calls == [["flights from tampa to boston"]]


def test_a_near_copy_above_the_threshold_is_verified_with_the_reordering_and_the_confirmed_one_wins():
    calls: list[list[str]] = []
    verdict = decide([TAMPA_TO_BOSTON, BOSTON_TO_TAMPA], BAND, "flights from boston to tampa", _verify(calls))
    assert verdict.hit is not None and verdict.hit.entry_id == 31 and verdict.decided_by == VERIFIER
    assert calls == [["flights from tampa to boston", "flights from boston to tampa tomorrow"]]


def test_a_differently_worded_candidate_above_the_threshold_is_a_hit_without_the_verifier():
    calls: list[list[str]] = []
    verdict = decide([RESET], BAND, "I forgot my login, how can I change it", _verify(calls))
    assert verdict.decided_by == THRESHOLD and calls == []


def test_without_a_verifier_or_the_guard_text_a_reordering_is_a_plain_threshold_hit():
    assert decide([TAMPA_TO_BOSTON], BAND, "flights from boston to tampa", None).decided_by == THRESHOLD
    assert decide([TAMPA_TO_BOSTON], BAND, "", _verify([])).decided_by == THRESHOLD


def test_a_negation_above_the_threshold_is_verified():
    calls: list[list[str]] = []
    negated = _candidate(32, "my card has not arrived yet", 0.95)
    verdict = decide([negated], BAND, "where is my card", _verify(calls))
    assert verdict.hit is None and verdict.decided_by == VERIFIER_REJECTED and calls == [["my card has not arrived yet"]]


# -- the veto: with a veto_score, candidates at or above the threshold are verified too -------



def test_without_a_verifier_the_veto_changes_nothing():
    assert decide([STORE_OPEN], VETO, "are you open on sundays", None).decided_by == THRESHOLD
    assert decide([STORE_OPEN], VETO, "", None).decided_by == THRESHOLD


def test_a_near_copy_above_the_threshold_still_needs_the_band_score_under_a_veto():
    calls: list[list[str]] = []
    policy = dataclasses.replace(VETO, veto_score=0.01)  # a near copy is held to min_verifier_score (0.5), not this
    verdict = decide([TAMPA_TO_BOSTON], policy, "flights from boston to tampa", _verify(calls))
    assert verdict.hit is None and verdict.decided_by == VERIFIER_REJECTED


# -- neighbour agreement: the nearest live candidates hold one answer --------------------

AGREE = DecisionPolicy(0.92, agreement_neighbours=3, agreement_min_similarity=0.65, agreement_margin=0.1)


def _answer(entry_id: int, query: str, response: str, similarity: float, **record: float) -> Candidate:
    return Candidate(entry_id, EntryRecord(query=query, response=response.encode(), **record), similarity)


CARD_1 = _answer(50, "my new card is still on its way", "card_arrival", 0.80)
CARD_2 = _answer(51, "when will my card be delivered", "card_arrival", 0.76)
CARD_3 = _answer(52, "how long until the card arrives", "card_arrival", 0.70)
CARD_FAR = _answer(53, "is there a card delivery fee", "card_arrival", 0.60)
LOST = _answer(54, "I lost my card", "lost_card", 0.66)
LOST_CLOSE = _answer(55, "my card was stolen", "lost_card", 0.72)
QUERY = "where is the card you sent me"


@pytest.mark.parametrize(
    "reason,candidates,policy,hit,decided_by",
    [
        ("three nearest agree, each above the minimum, no other answer within the margin: the nearest is the hit",
         [CARD_1, CARD_2, CARD_3, LOST], AGREE, 50, AGREEMENT),
        ("off (0 neighbours): the plain threshold", [CARD_1, CARD_2, CARD_3], dataclasses.replace(AGREE, agreement_neighbours=0),
         None, BELOW_THRESHOLD),
        ("only two candidates", [CARD_1, CARD_2], AGREE, None, BELOW_THRESHOLD),
        ("the third is under agreement_min_similarity", [CARD_1, CARD_2, CARD_FAR], AGREE, None, BELOW_THRESHOLD),
        ("another answer among the nearest three", [CARD_1, LOST_CLOSE, CARD_2, CARD_3], AGREE, None, BELOW_THRESHOLD),
        ("another answer after the three, but within the margin of the nearest",
         [CARD_1, CARD_2, CARD_3, _answer(56, "my card was stolen", "lost_card", 0.705)], AGREE, None, BELOW_THRESHOLD),
        ("another answer just outside the margin does not count", [CARD_1, CARD_2, CARD_3, _answer(57, "x", "lost_card", 0.70)],
         AGREE, 50, AGREEMENT),
        ("an empty response is no answer to agree on",
         [_answer(58, "a", "", 0.8), _answer(59, "b", "", 0.79), _answer(60, "c", "", 0.78)], AGREE, None, BELOW_THRESHOLD),
        ("a candidate under its own floor (wrong verdicts raised it) does not vote; without it two remain",
         [_answer(61, "my new card is still on its way", "card_arrival", 0.80, min_similarity=0.9), CARD_2, CARD_3],
         AGREE, None, BELOW_THRESHOLD),
        ("a candidate under its floor is skipped and the next ones make three",
         [_answer(61, "my new card is still on its way", "card_arrival", 0.80, min_similarity=0.9), CARD_1, CARD_2, CARD_3],
         AGREE, 50, AGREEMENT),
        ("above the threshold the threshold's hit comes first",
         [_answer(62, "where is the card you sent", "card_arrival", 0.95), CARD_1, CARD_2], AGREE, 62, "threshold"),
    ],
)
def test_neighbour_agreement(reason, candidates, policy, hit, decided_by):
    verdict = decide(candidates, policy, QUERY)
    assert (verdict.hit.entry_id if verdict.hit else None) == hit, reason
    assert verdict.decided_by == decided_by, reason


def test_agreement_after_the_verifier_rejects_the_band_and_reads_past_the_band():
    calls: list[list[str]] = []
    policy = dataclasses.replace(BAND, min_verifier_score=0.95, agreement_neighbours=3, agreement_min_similarity=0.65,
                                 agreement_margin=0.1)
    rest = [_answer(71, "can I send it back", "returns", 0.79), _answer(72, "returning a purchase", "returns", 0.7)]
    unsure = _answer(70, "what is your return policy", "returns", 0.86)  # the verifier: 0.9, under the band's 0.95
    verdict = decide([unsure, *rest], policy, "how to return something", _verify(calls))
    assert verdict.hit is not None and verdict.hit.entry_id == 70 and verdict.decided_by == AGREEMENT
    assert calls == [["what is your return policy"]]  # the band's one candidate; the rest were read for agreement only
    # the verifier's "another question" (0.2, under AGREEMENT_MIN_JUDGEMENT) stands, whatever its neighbours hold
    doubted = _answer(70, "how do I return an item", "returns", 0.86)
    assert decide([doubted, *rest], policy, "how to return something", _verify([])).decided_by == VERIFIER_REJECTED


def test_agreement_does_not_overrule_the_verifier_on_a_reordering():
    flights = [_answer(80 + i, q, "TPA-BOS", s) for i, (q, s) in enumerate(
        [("flights from tampa to boston", 0.93), ("flight from tampa to boston please", 0.85), ("tampa to boston flights", 0.8)]
    )]
    calls: list[list[str]] = []
    # the nearest is the query's words reordered: the verifier judges it (0.05) and agreement cannot undo that
    policy = dataclasses.replace(AGREE, band_low=0.8, min_verifier_score=0.95, veto_score=0.9)
    verdict = decide(flights, policy, "flights from boston to tampa", _verify(calls))
    assert verdict.hit is None and verdict.decided_by == VERIFIER_REJECTED and "flights from tampa to boston" in calls[0]
    assert decide(flights[1:], AGREE, "which flights go from tampa to boston").decided_by == BELOW_THRESHOLD  # two only


def test_agreement_never_serves_what_the_guard_refuses():
    open_ = [_answer(80 + i, q, "yes", s) for i, (q, s) in
             enumerate([("is port 22 open", 0.9), ("is port 22 open now", 0.85), ("port 22 open?", 0.8)])]
    assert decide(open_, AGREE, "is port 22 not open").hit is None
    assert decide(open_, AGREE, "is port 22 closed").hit is None


def test_agreement_gives_up_within_max_examined():
    policy = dataclasses.replace(AGREE, max_examined=2)
    assert decide([CARD_1, CARD_2, CARD_3], policy, QUERY).hit is None
