"""Neighbour agreement over gRPC, with client vectors: a Lookup under the threshold is a hit
when its nearest stored questions all hold one answer (semcache_server/decision.py)."""

from __future__ import annotations

import pytest

from semcache_server.errors import ConfigError
from semcache_server.settings import NamespaceSettings, Settings
from tests.helpers import unit_vector, vector_at_similarity

QUERY = unit_vector(1)
P = {"namespace": "support", "model": "m", "prompt_version": "v1"}
NEIGHBOURS = [("when does my card arrive", 0.80), ("is my card on its way", 0.76), ("card delivery time", 0.70)]


def _store(client, partition, questions, response: str = "Cards arrive in 3-5 working days.", seed: int = 10):  # type: ignore[no-untyped-def]
    for i, (question, similarity) in enumerate(questions):
        client.store(partition, question, response, embedding=vector_at_similarity(QUERY, similarity, seed + i))


def test_agreeing_neighbours_answer_under_the_threshold(make_server):
    _, client = make_server(embedder=None)
    _store(client, P, NEIGHBOURS)
    found = client.lookup(P, "where is my new card", embedding=QUERY)
    assert found.hit and found.decided_by == "agreement"
    assert found.response == b"Cards arrive in 3-5 working days." and found.matched_query == "when does my card arrive"
    assert found.similarity == pytest.approx(0.80, abs=1e-5)
    assert not found.HasField("verifier_score")


def test_two_answers_near_the_query_are_no_agreement(make_server):
    _, client = make_server(embedder=None)
    _store(client, P, NEIGHBOURS)
    # another answer 0.06 under the nearest: inside the 0.1 margin, so the vote is split
    client.store(P, "I lost my card", "Freeze it in the app.", embedding=vector_at_similarity(QUERY, 0.74, 20))
    missed = client.lookup(P, "where is my new card", embedding=QUERY)
    assert not missed.hit and missed.decided_by == "below_threshold"


def test_neighbours_in_another_partition_or_with_other_answers_do_not_vote(make_server):
    _, client = make_server(embedder=None)
    _store(client, {**P, "prompt_version": "v2"}, NEIGHBOURS)
    assert not client.lookup(P, "where is my new card", embedding=QUERY).hit  # v1 holds nothing
    for i, (question, similarity) in enumerate(NEIGHBOURS):  # one answer each: nothing to agree on
        client.store(P, question, f"answer {i}", embedding=vector_at_similarity(QUERY, similarity, 30 + i))
    assert not client.lookup(P, "where is my new card", embedding=QUERY).hit


def test_agreement_is_a_namespace_setting(make_server):
    _, client = make_server(embedder=None, namespaces={"strict": NamespaceSettings(agreement_neighbours=0),
                                                       "loose": NamespaceSettings(agreement_min_similarity=0.5)})
    far = [(q, s - 0.12) for q, s in NEIGHBOURS]  # the third at 0.58: under the default's 0.65
    for namespace in ("support", "strict", "loose"):
        _store(client, {**P, "namespace": namespace}, NEIGHBOURS if namespace == "strict" else far)
    assert not client.lookup(P, "where is my new card", embedding=QUERY).hit
    assert not client.lookup({**P, "namespace": "strict"}, "where is my new card", embedding=QUERY).hit
    assert client.lookup({**P, "namespace": "loose"}, "where is my new card", embedding=QUERY).decided_by == "agreement"


def test_a_wrong_verdict_stops_an_agreement_hit_for_that_question(make_server):
    _, client = make_server(embedder=None)
    _store(client, P, NEIGHBOURS)
    served = client.lookup(P, "where is my new card", embedding=QUERY)
    assert served.decided_by == "agreement"
    assert client.feedback(P, served.lookup_id, correct=False).counted
    again = client.lookup(P, "where is my new card", embedding=QUERY)
    assert not again.hit  # the nearest never answers it again, and two neighbours are too few


@pytest.mark.parametrize("neighbours", [1, 17, -1])
def test_agreement_neighbours_out_of_range_is_a_config_error(neighbours):
    with pytest.raises(ConfigError, match="agreement_neighbours"):
        Settings().with_overrides(agreement_neighbours=neighbours)


def test_agreement_margin_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="agreement_margin"):
        Settings().with_overrides(agreement_margin=1.5)


def test_audited_agreement_hits_count_against_every_threshold(make_server):
    """An agreement hit is served whatever the threshold, so a wrong one counts against
    each threshold the audits weigh, as a verifier's hit does; else the bound would not see it."""
    _, client = make_server(embedder=None, max_false_hit_rate=0.05, adaptive_min_audits=30)
    for i in range(40):
        base = unit_vector(7000 + i)
        partition = {**P, "prompt_version": f"v{i}"}  # one namespace, a neighbourhood each
        for j, (question, similarity) in enumerate(NEIGHBOURS):
            client.store(partition, question, f"answer {i}", embedding=vector_at_similarity(base, similarity, 100 * i + j))
        found = client.lookup(partition, "where is my new card", embedding=base, audit_rate=1.0)
        assert found.decided_by == "agreement" and found.audit
        client.feedback(partition, found.lookup_id, correct=False)  # the asker needed another answer
    report = next(c for c in client.stats().calibrations if c.namespace == "support")
    assert report.wrong_audits == 40 and report.false_hit_rate > 0.5 and not report.certified
