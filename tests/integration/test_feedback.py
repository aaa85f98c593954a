"""Feedback over gRPC with client vectors: a wrong verdict stops a bad match (for its
question, and for every query at least as far from the entry), verdicts count once and
give an interval, poisoning with "correct" opens nothing, state survives a restart."""

from __future__ import annotations

import grpc
import pytest

from semcache_server.feedback import wilson_interval
from semcache_server.lookup_ids import MAX_CHARS
from tests.helpers import status_of, unit_vector, vector_at_similarity

APP = {"namespace": "app", "model": "m"}


@pytest.fixture
def served(make_server):
    return make_server(embedder=None, min_similarity=0.9)


def test_every_lookup_has_its_own_id(served):
    _, client = served
    client.store(APP, "q", "a", embedding=unit_vector(1))
    ids = {client.lookup(APP, "q", embedding=unit_vector(1)).lookup_id for _ in range(5)}
    ids.add(client.lookup(APP, "other", embedding=unit_vector(2)).lookup_id)
    assert len(ids) == 6 and all(0 < len(i) <= MAX_CHARS and i.isascii() for i in ids)  # signed: see lookup_ids.py


def test_a_wrong_verdict_stops_the_match_for_that_question_and_farther_ones(served):
    _, client = served
    base = unit_vector(3)
    client.store(APP, "what is the refund policy", "30 days", embedding=base)
    wrong_query = vector_at_similarity(base, 0.95, seed=4)
    served_wrongly = client.lookup(APP, "what is the return policy for sale items", embedding=wrong_query)
    assert served_wrongly.hit
    reply = client.feedback(APP, served_wrongly.lookup_id, correct=False)
    assert reply.counted and reply.vetoed
    assert not client.lookup(APP, "what is the return policy for sale items", embedding=wrong_query).hit  # never again
    assert not client.lookup(APP, "returns on discounted items", embedding=vector_at_similarity(base, 0.93, seed=5)).hit
    assert client.lookup(APP, "what's the refund policy", embedding=vector_at_similarity(base, 0.98, seed=6)).hit  # nearer
    assert client.lookup(APP, "what is the refund policy", embedding=base).exact  # its own question


def test_verdicts_count_once_and_give_an_interval(served):
    _, client = served
    base = unit_vector(7)
    client.store(APP, "how do I reset my password", "a", embedding=base)
    found = client.lookup(APP, "password reset", embedding=vector_at_similarity(base, 0.97, seed=8))
    assert found.hit
    assert client.feedback(APP, found.lookup_id, correct=True).counted
    assert not client.feedback(APP, found.lookup_id, correct=False).counted  # idempotent per lookup_id
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]
    for i, word in enumerate(words):
        hit = client.lookup(APP, f"reset password {word}", embedding=vector_at_similarity(base, 0.999, seed=20 + i))
        assert hit.hit
        client.feedback(APP, hit.lookup_id, correct=i != len(words) - 1)  # the wrong one last: it closes the entry
    stats = client.stats()
    assert stats.verdicts_correct == 9 and stats.verdicts_wrong == 1
    low, high = wilson_interval(1, 10)
    assert stats.false_hit_rate.estimate == pytest.approx(0.1)
    assert stats.false_hit_rate.low == pytest.approx(low) and stats.false_hit_rate.high == pytest.approx(high)
    assert stats.partitions[0].verdicts_wrong == 1 and stats.partitions[0].false_hit_rate.verdicts == 10


def test_poisoning_with_correct_verdicts_opens_nothing(served):
    _, client = served
    base = unit_vector(9)
    client.store(APP, "q", "a", embedding=base)
    far = vector_at_similarity(base, 0.85, seed=10)
    for _ in range(50):
        missed = client.lookup(APP, "unrelated", embedding=far)
        assert not missed.hit
        client.feedback(APP, missed.lookup_id, correct=True)  # a verdict on a miss counts nothing
    assert not client.lookup(APP, "unrelated", embedding=far).hit
    assert client.stats().verdicts_correct == 0


def test_a_miss_can_name_the_entry_that_should_have_answered(served):
    _, client = served
    base = unit_vector(11)
    stored = client.store(APP, "how do I get a refund", "30 days", embedding=base)
    far = vector_at_similarity(base, 0.8, seed=12)
    missed = client.lookup(APP, "money back?", embedding=far)
    assert not missed.hit
    reply = client.feedback(APP, missed.lookup_id, correct=False, should_match_entry_id=stored.entry_id)
    assert reply.alias_entry_id
    again = client.lookup(APP, "money back?", embedding=far)
    assert again.hit and again.response == b"30 days" and again.entry_id == reply.alias_entry_id


def test_bad_feedback_is_a_clear_status(make_server):
    _, client = make_server(embedder=None, feedback_per_second=2.0)
    client.store(APP, "q", "a", embedding=unit_vector(13))
    found = client.lookup(APP, "q", embedding=unit_vector(13))
    assert status_of(lambda: client.feedback(APP, "nope", correct=True)) == grpc.StatusCode.NOT_FOUND
    other = {"namespace": "other", "model": "m"}
    assert status_of(lambda: client.feedback(other, found.lookup_id, correct=False)) == grpc.StatusCode.NOT_FOUND
    codes = [status_of(lambda: client.feedback(APP, "nope", correct=True)) for _ in range(10)]
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes


def test_past_the_newest_feedback_log_entries_a_hit_still_counts_but_a_miss_cannot_alias(make_server):
    _, client = make_server(embedder=None, feedback_log_entries=2, min_similarity=0.9)
    stored = client.store(APP, "q", "a", embedding=unit_vector(16))
    oldest_miss = client.lookup(APP, "missed", embedding=unit_vector(17)).lookup_id
    oldest_hit, *newer = [client.lookup(APP, "q", embedding=unit_vector(16)).lookup_id for _ in range(3)]
    # An alias needs the missed query's text and key, which only the log keeps; the
    # verdict is refused before it is counted.
    alias = lambda: client.feedback(APP, oldest_miss, True, should_match_entry_id=stored.entry_id)  # noqa: E731
    assert status_of(alias) == grpc.StatusCode.FAILED_PRECONDITION
    assert client.feedback(APP, oldest_miss, correct=True).counted
    # What a hit served is in its signed id: the verdict counts, once.
    assert client.feedback(APP, oldest_hit, correct=True).counted
    assert not client.feedback(APP, oldest_hit, correct=True).counted
    assert all(client.feedback(APP, lookup_id, correct=True).counted for lookup_id in newer)
    assert client.stats().verdicts_correct == 3


def test_a_forged_or_misplaced_lookup_id_is_not_found(make_server):
    _, client = make_server(embedder=None, feedback_log_entries=1, min_similarity=0.9)
    client.store(APP, "q", "a", embedding=unit_vector(18))
    lookup_id = client.lookup(APP, "q", embedding=unit_vector(18)).lookup_id
    client.lookup(APP, "q", embedding=unit_vector(18))  # pushes the first out of the log
    flipped = lookup_id[:30] + ("A" if lookup_id[30] != "A" else "B") + lookup_id[31:]
    for bad in (flipped, lookup_id[:-2], lookup_id + "AAAA", "\u00e9" * 40, "x" * 10_000):
        assert status_of(lambda b=bad: client.feedback(APP, b, correct=False)) == grpc.StatusCode.NOT_FOUND
    other_model = {"namespace": "app", "model": "another"}
    assert status_of(lambda: client.feedback(other_model, lookup_id, correct=False)) == grpc.StatusCode.NOT_FOUND
    assert client.feedback(APP, lookup_id, correct=False).vetoed


def test_a_lookup_id_expires_after_feedback_log_seconds(make_server):
    now = [1_000_000.0]
    _, client = make_server(embedder=None, clock=lambda: now[0], feedback_log_seconds=60, min_similarity=0.9)
    client.store(APP, "q", "a", embedding=unit_vector(19))
    lookup_ids = [client.lookup(APP, "q", embedding=unit_vector(19)).lookup_id for _ in range(2)]
    now[0] += 59
    assert client.feedback(APP, lookup_ids[0], correct=True).counted
    now[0] += 2
    assert status_of(lambda: client.feedback(APP, lookup_ids[1], correct=True)) == grpc.StatusCode.NOT_FOUND


def test_a_verdict_after_a_restart_counts_once_and_vetoes(make_server):
    server, client = make_server(embedder=None, min_similarity=0.9)
    base = unit_vector(20)
    client.store(APP, "q", "a", embedding=base)
    near = vector_at_similarity(base, 0.95, seed=21)
    wrong = client.lookup(APP, "wrong one", embedding=near)
    judged = client.lookup(APP, "q", embedding=base)
    assert wrong.hit and client.feedback(APP, judged.lookup_id, correct=True).counted
    for _ in range(2):
        client.close()
        server.stop(grace_seconds=1)
        server, client = make_server(embedder=None, min_similarity=0.9)
        assert not client.feedback(APP, judged.lookup_id, correct=True).counted  # counted before the restart
    assert client.feedback(APP, wrong.lookup_id, correct=False).vetoed
    assert not client.feedback(APP, wrong.lookup_id, correct=False).counted
    assert not client.lookup(APP, "wrong one", embedding=near).hit
    assert (client.stats().verdicts_correct, client.stats().verdicts_wrong) == (1, 1)
    assert server.cache.check_consistency() == []


def test_verdicts_and_vetoes_survive_a_restart(make_server):
    server, client = make_server(embedder=None, min_similarity=0.9)
    base = unit_vector(14)
    client.store(APP, "q", "a", embedding=base)
    near = vector_at_similarity(base, 0.95, seed=15)
    client.feedback(APP, client.lookup(APP, "wrong one", embedding=near).lookup_id, correct=False)
    client.close()
    server.stop(grace_seconds=1)
    server, client = make_server(embedder=None, min_similarity=0.9)
    assert not client.lookup(APP, "wrong one", embedding=near).hit
    assert client.stats().verdicts_wrong == 1
    assert server.cache.check_consistency() == []


def test_an_alias_of_a_miss_after_a_restart_takes_the_lookup_sent_again(make_server):
    """The server kept the missed Lookup in memory only; after a restart the Feedback
    carries its query, key and vector again, checked against the question digest the
    signed lookup_id carries."""
    server, client = make_server(embedder=None, min_similarity=0.9)
    base = unit_vector(40)
    stored = client.store(APP, "how do I get a refund", "30 days", embedding=base)
    far = vector_at_similarity(base, 0.5, seed=41)
    key = {"settings": {"temperature": 0}}
    missed = client.lookup(APP, "money back?", embedding=far, key=key)
    assert not missed.hit
    client.close()
    server.stop(grace_seconds=1)
    server, client = make_server(embedder=None, min_similarity=0.9)

    def alias(**sent):  # type: ignore[no-untyped-def]
        return lambda: client.feedback(APP, missed.lookup_id, True, should_match_entry_id=stored.entry_id, **sent)

    assert status_of(alias()) == grpc.StatusCode.FAILED_PRECONDITION  # nothing sent: it says what to send
    assert status_of(alias(query="refund now", key=key, embedding=far)) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(alias(query="money back?", embedding=far)) == grpc.StatusCode.INVALID_ARGUMENT  # not its key
    other_key = {"settings": {"temperature": 1}}
    assert status_of(alias(query="money back?", key=other_key, embedding=far)) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(alias(query="money back?", key=key)) == grpc.StatusCode.FAILED_PRECONDITION  # no model: the vector
    reply = alias(query="money back?", key=key, embedding=far)()
    assert reply.counted and reply.alias_entry_id
    assert not alias(query="money back?", key=key, embedding=far)().counted  # once per lookup_id
    again = client.lookup(APP, "money back?", embedding=far, key=key)
    assert again.hit and again.response == b"30 days" and again.entry_id == reply.alias_entry_id
    assert not client.lookup(APP, "money back?", embedding=far, key=other_key).hit  # the alias keeps its key
    assert server.cache.check_consistency() == []
