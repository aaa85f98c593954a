"""Issue 19: audits hold the threshold to max_false_hit_rate, over a real server.

Small labeled streams with client vectors: each question's entry is stored once, and
each later asker comes at a chosen cosine to it with the same answer (a paraphrase) or
another (a different question). The server draws the audits; the labels judge them."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc

from semcache_server.aio_client import AsyncClient
from tests.helpers import status_of, unit_vector, vector_at_similarity

APP = {"namespace": "app", "model": "m"}
# A loose target and few audits, so that a short stream can certify a threshold.
LOOP = {"max_false_hit_rate": 0.05, "adaptive_min_audits": 30, "adaptive_max_loosening": 0.04, "min_similarity": 0.92}


def _stream(client, base_seed: int, similarities: list[float], same_answer: bool, *, poison: bool = False) -> list[bool]:
    """One stored question per similarity, then an asker at that cosine; every audit judged
    (by the truth, or "correct" when poisoned). Returns whether each asker was served wrongly."""
    served_wrong = []
    for i, similarity in enumerate(similarities):
        seed = base_seed + i
        base = unit_vector(seed)
        client.store(APP, f"q{seed}", f"a{seed}", embedding=base)
        asker = vector_at_similarity(base, similarity, seed=seed + 100_000)
        found = client.lookup(APP, f"asker {seed}", embedding=asker, audit_rate=1.0)
        served_wrong.append(found.hit and not same_answer)
        if found.audit:
            assert found.hit or found.audit_entry_id
            client.feedback(APP, found.lookup_id, correct=True if poison else same_answer)
    return served_wrong


def _calibration(client):
    return next(c for c in client.stats().calibrations if c.namespace == "app")


def test_clean_audits_open_the_near_misses_within_the_bound(make_server):
    _, client = make_server(embedder=None, **LOOP)
    _stream(client, 1000, [0.895, 0.905, 0.915] * 30, same_answer=True)  # paraphrases just under 0.92
    report = _calibration(client)
    assert abs(report.configured_threshold - 0.92) < 1e-6 and 0.88 - 1e-6 <= report.threshold < 0.90
    assert report.false_hit_rate_upper <= 0.05 and report.audits == 90 and report.audits_total == 90
    base = unit_vector(5000)
    client.store(APP, "q5000", "a5000", embedding=base)
    found = client.lookup(APP, "asker 5000", embedding=vector_at_similarity(base, 0.90, seed=5001))
    assert found.hit and found.threshold == report.threshold


def test_wrong_audits_close_what_they_found_wrong(make_server):
    _, client = make_server(embedder=None, **LOOP)
    wrong = _stream(client, 2000, [0.93, 0.935] * 30, same_answer=False)  # other questions over 0.92
    # Served wrongly before the first audit; from it on, nothing is certified, so the
    # namespace is held at uncertified_min_similarity (0.98), then above the wrong ones.
    assert wrong[0] and not any(wrong[1:])
    assert _calibration(client).threshold > 0.935
    assert client.stats().verdicts_wrong > 0  # the audited hits count as verdicts too


def test_a_flood_of_correct_verdicts_opens_nothing_past_the_floor(make_server):
    _, client = make_server(embedder=None, **LOOP)
    bands = [0.87, 0.885, 0.91] * 60  # every asker another question; the first band under the floor
    wrong = _stream(client, 3000, bands, same_answer=False, poison=True)
    assert _calibration(client).threshold >= 0.88 - 1e-6  # 0.92 less adaptive_max_loosening at most
    assert not any(w for w, s in zip(wrong, bands, strict=True) if s < 0.88)  # under the floor: never served
    assert 0 < sum(wrong) <= 120  # the two bands over the floor, once false verdicts opened them


def test_the_adapted_threshold_survives_a_restart(make_server):
    server, client = make_server(embedder=None, **LOOP)
    _stream(client, 4000, [0.895, 0.905, 0.915] * 30, same_answer=True)
    before = _calibration(client)
    client.close()
    server.stop(grace_seconds=1)
    server, client = make_server(embedder=None, **LOOP)
    after = _calibration(client)
    assert (after.threshold, after.audits, after.audits_total) == (before.threshold, before.audits, before.audits_total)
    assert server.cache.check_consistency() == []


def test_audit_rate_and_fresh_response_errors_are_clear(make_server):
    _, client = make_server(embedder=None, **LOOP)
    client.store(APP, "q", "a", embedding=unit_vector(6000))
    assert status_of(lambda: client.lookup(APP, "q", embedding=unit_vector(6000), audit_rate=1.5)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    found = client.lookup(APP, "x", embedding=vector_at_similarity(unit_vector(6000), 0.95, seed=1))
    assert not found.audit  # no audit_rate: never drawn
    # fresh_response needs a Lookup drawn for an audit, and the server's model.
    assert status_of(lambda: client.feedback(APP, found.lookup_id, False, fresh_response="a")) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )


def test_get_or_compute_audits_hits_in_the_background(make_server):
    # The client's mechanics, not the threshold: keep the configured one until certified.
    _, client = make_server(embedder=None, **LOOP, uncertified_min_similarity=-1.0)
    base = unit_vector(7000)
    calls = []
    value = client.get_or_compute(APP, "q", lambda: "a", embedding=base)
    assert value == "a"

    def compute() -> str:
        calls.append(1)
        return "a, freshly"

    for i in range(5):
        near = vector_at_similarity(base, 0.95, seed=7001 + i)
        assert client.get_or_compute(APP, f"asker {'abcde'[i]}", compute, embedding=near, audit_rate=1.0,
                                     same=lambda fresh, cached: fresh.startswith(cached)) == "a"
    client.audits.close()  # waits for the audits in flight
    assert len(calls) == 5 and client.audits.skipped == 0
    assert client.stats().verdicts_correct == 5 and _calibration(client).audits == 5


def test_without_same_the_server_compares_the_answers_by_meaning(make_server, embedder):
    _, client = make_server(embedder=embedder, **LOOP)
    client.store(APP, "How do I reset my password?", "Open Settings, choose Security, then Reset password.")
    found = client.lookup(APP, "How can I reset my password?", audit_rate=1.0)
    assert found.hit and found.audit
    client.feedback(APP, found.lookup_id, False, fresh_response="Go to Settings > Security and pick Reset password.")
    wrong = client.lookup(APP, "how can i reset my password", audit_rate=1.0)
    assert wrong.hit and wrong.audit
    client.feedback(APP, wrong.lookup_id, False, fresh_response="Our store opens at 9 am on weekdays.")
    stats = client.stats()
    assert (stats.verdicts_correct, stats.verdicts_wrong) == (1, 1)


def test_the_async_client_audits_hits_and_near_misses_as_tasks(make_server):
    server, client = make_server(embedder=None, **LOOP)
    base = unit_vector(8000)
    client.get_or_compute(APP, "q", lambda: "a", embedding=base)  # stored as text
    calls = []

    async def compute() -> str:
        calls.append(1)
        return "b"

    async def scenario() -> list[str | bytes]:
        async with AsyncClient(f"127.0.0.1:{server.port}") as cache:
            near = vector_at_similarity(base, 0.95, seed=8001)  # a hit, audited: compute runs in a task
            hit = await cache.get_or_compute(APP, "asker", compute, embedding=near, audit_rate=1.0, same=str.__eq__)
            under = vector_at_similarity(base, 0.90, seed=8002)  # a near miss, audited against "a"
            miss = await cache.get_or_compute(APP, "other asker", compute, embedding=under, audit_rate=1.0, same=str.__eq__)
            return [hit, miss]

    assert asyncio.run(scenario()) == ["a", "b"]
    assert len(calls) == 2
    report = _calibration(client)
    assert (report.audits, report.wrong_audits) == (2, 2)  # "b" is not "a": both judged wrong
    assert client.stats().verdicts_wrong == 1  # the hit's verdict; a near miss's only moves the threshold


def test_prometheus_has_the_threshold_in_force_and_its_bound(make_server):
    server, client = make_server(embedder=None, metrics_listen="127.0.0.1:0", **LOOP)
    _stream(client, 9000, [0.895, 0.905, 0.915] * 30, same_answer=True)
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    threshold = next(line for line in text.splitlines() if line.startswith('semcache_threshold{namespace="app"}'))
    assert float(threshold.split()[-1]) < 0.9
    assert 'semcache_audits_total{namespace="app"} 90.0' in text
    assert 'semcache_false_hit_rate_upper{namespace="app"}' in text
    assert 'semcache_threshold_certified{namespace="app"} 1.0' in text


def test_a_namespace_is_held_strict_until_its_audits_certify_a_threshold(make_server):
    _, client = make_server(embedder=None, **LOOP)
    base = unit_vector(9500)
    client.store(APP, "the question", "its answer", embedding=base)
    before = client.lookup(APP, "one asker", embedding=vector_at_similarity(base, 0.95, seed=9501), audit_rate=1.0)
    assert before.hit and abs(before.threshold - 0.92) < 1e-6  # no audit yet: the configured threshold
    client.feedback(APP, before.lookup_id, correct=True)
    report = _calibration(client)
    assert abs(report.threshold - 0.98) < 1e-6 and not report.certified  # one audit certifies nothing
    again = client.lookup(APP, "another asker", embedding=vector_at_similarity(base, 0.95, seed=9502))
    assert not again.hit and abs(again.threshold - 0.98) < 1e-6
    _stream(client, 9600, [0.895, 0.905, 0.915] * 30, same_answer=True)  # clean audits: certified
    report = _calibration(client)
    assert report.certified and report.threshold < 0.92 and report.false_hit_rate_upper <= 0.05
