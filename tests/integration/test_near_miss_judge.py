"""Issue 19: the app's judge of near misses, over a real server.

A miss whose best candidate came within LookupRequest.near_miss_band under the threshold
names it; the clients ask the app's judge in the background and, on a yes, send Feedback
that makes the missed query an alias of the candidate, so the next asker is served its
answer. Client vectors: the cosines are chosen, the threshold is 0.92."""

from __future__ import annotations

import asyncio

import grpc

from semcache_server.aio_client import AsyncClient
from tests.helpers import status_of, unit_vector, vector_at_similarity

APP = {"namespace": "app", "model": "m"}
THRESHOLD = {"min_similarity": 0.92}


def _stored(client, seed: int) -> tuple[list[float], str]:
    base = unit_vector(seed)
    return base, client.store(APP, "stored question", f"answer {seed}", embedding=base).entry_id


def test_a_miss_names_its_best_candidate_only_within_the_band(make_server):
    _, client = make_server(embedder=None, **THRESHOLD)
    base, entry_id = _stored(client, 100)
    asker = vector_at_similarity(base, 0.88, seed=101)
    near = client.lookup(APP, "asker", embedding=asker, near_miss_band=0.1)
    assert not near.hit and abs(near.similarity - 0.88) < 1e-4
    assert (near.near_miss_entry_id, near.near_miss_query, near.near_miss_response) == (
        entry_id, "stored question", b"answer 100",
    )
    assert not client.lookup(APP, "asker", embedding=asker, near_miss_band=0.02).near_miss_entry_id  # 0.04 under
    assert not client.lookup(APP, "asker", embedding=asker).near_miss_entry_id  # not asked for
    hit = client.lookup(APP, "close asker", embedding=vector_at_similarity(base, 0.95, seed=102), near_miss_band=0.1)
    assert hit.hit and not hit.near_miss_entry_id
    for band in (1.5, -0.1, float("nan")):
        assert status_of(lambda b=band: client.lookup(APP, "asker", embedding=asker, near_miss_band=b)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )


def test_a_confirmed_near_miss_becomes_an_alias_and_the_next_asker_hits(make_server):
    _, client = make_server(embedder=None, **THRESHOLD)
    base, entry_id = _stored(client, 200)
    asker = vector_at_similarity(base, 0.88, seed=201)
    asked = []

    def judge(query: str, candidate_query: str, candidate: str) -> bool:
        asked.append((query, candidate_query, candidate))
        return True

    value = client.get_or_compute(APP, "asker", lambda: "fresh answer", embedding=asker, judge=judge)
    assert value == "fresh answer"  # the caller never waits for the judge
    client.audits.close()  # waits for the checks in flight
    assert asked == [("asker", "stored question", "answer 200")]
    again = client.lookup(APP, "asker", embedding=asker)
    assert again.hit and again.response == b"answer 200" and again.entry_id != entry_id
    assert client.stats().entries == 2  # the alias replaced the fresh entry of the same question


def test_a_refused_near_miss_keeps_the_fresh_answer(make_server):
    _, client = make_server(embedder=None, **THRESHOLD)
    base, _ = _stored(client, 300)
    asker = vector_at_similarity(base, 0.88, seed=301)
    client.get_or_compute(APP, "asker", lambda: "fresh answer", embedding=asker, judge=lambda *_: False)
    client.audits.close()
    again = client.lookup(APP, "asker", embedding=asker)
    assert again.hit and again.response == b"fresh answer"


def test_the_judge_is_not_asked_past_the_band_nor_for_no_store(make_server):
    _, client = make_server(embedder=None, **THRESHOLD)
    base, _ = _stored(client, 400)
    asked = []

    def judge(*args: str) -> bool:
        asked.append(args)
        return True

    far = vector_at_similarity(base, 0.70, seed=401)
    client.get_or_compute(APP, "far asker", lambda: "far answer", embedding=far, judge=judge)
    near = vector_at_similarity(base, 0.88, seed=402)
    client.get_or_compute(APP, "unstored asker", lambda: "x", embedding=near, judge=judge, no_store=True)
    client.audits.close()
    assert asked == []
    assert client.stats().entries == 2


def test_an_audited_near_miss_sends_the_audit_and_the_alias_in_one_verdict(make_server):
    _, client = make_server(embedder=None, max_false_hit_rate=0.05, **THRESHOLD)
    base, _ = _stored(client, 500)
    asker = vector_at_similarity(base, 0.91, seed=501)  # near the threshold: drawn for an audit
    client.get_or_compute(APP, "asker", lambda: "answer 500", embedding=asker, audit_rate=1.0, same=str.__eq__,
                          judge=lambda *_: True)
    client.audits.close()
    report = next(c for c in client.stats().calibrations if c.namespace == "app")
    assert (report.audits, report.wrong_audits) == (1, 0)
    again = client.lookup(APP, "asker", embedding=asker)
    assert again.hit and again.response == b"answer 500" and again.decided_by == "exact"


def test_the_async_client_asks_an_async_judge_in_a_task(make_server):
    server, client = make_server(embedder=None, **THRESHOLD)
    base, _ = _stored(client, 600)
    asker = vector_at_similarity(base, 0.88, seed=601)

    async def judge(query: str, candidate_query: str, candidate: str) -> bool:
        await asyncio.sleep(0)
        return candidate == "answer 600"

    async def compute() -> str:
        return "fresh answer"

    async def scenario() -> str | bytes:
        async with AsyncClient(f"127.0.0.1:{server.port}") as cache:  # close waits for its tasks
            return await cache.get_or_compute(APP, "asker", compute, embedding=asker, judge=judge)

    assert asyncio.run(scenario()) == "fresh answer"
    again = client.lookup(APP, "asker", embedding=asker)
    assert again.hit and again.response == b"answer 600"


def test_the_judge_s_alias_holds_when_the_server_no_longer_has_the_miss(make_server):
    """The server keeps the newest feedback_log_entries Lookups (one here); the judge is
    slow, other Lookups push the miss out meanwhile, and the alias still goes in, since
    the client sends the missed Lookup's query, key and vector with it."""
    _, client = make_server(embedder=None, feedback_log_entries=1, **THRESHOLD)
    key = {"settings": {"tools": ["search"]}}
    base = unit_vector(700)
    entry_id = client.store(APP, "stored question", "answer 700", embedding=base, key=key).entry_id
    asker = vector_at_similarity(base, 0.88, seed=701)
    asked = []

    def judge(query: str, candidate_query: str, candidate: str) -> bool:
        for seed in range(702, 705):  # other traffic while the judge thinks
            client.lookup(APP, "someone else", embedding=unit_vector(seed))
        asked.append(query)
        return True

    client.get_or_compute(APP, "asker", lambda: "fresh answer", embedding=asker, key=key, judge=judge)
    client.audits.close()
    assert asked == ["asker"]
    again = client.lookup(APP, "asker", embedding=asker, key=key)
    assert again.hit and again.response == b"answer 700" and again.entry_id != entry_id
