"""Issue 19: the server's webhook judge of near misses, against a local fake judge over
real HTTP. A miss whose best candidate came within near_miss_judge_band under the
threshold is POSTed to it off the Lookup's path; a yes stores the query as an alias of
the candidate. Client vectors: the cosines are chosen, the threshold is 0.92."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from semcache_server.errors import ConfigError
from semcache_server.settings import Settings
from tests.helpers import unit_vector, vector_at_similarity

APP = {"namespace": "app", "model": "m", "prompt_version": "v3"}


class FakeJudge:
    """An HTTP judge: records each request; `reply(body) -> (status, bytes)` answers it;
    while `hold` is clear, requests wait (up to 10 s) before they are answered."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], str]] = []
        self.reply: Callable[[dict[str, Any]], tuple[int, bytes]] = lambda body: (200, b'{"match": true}')
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        judge = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.requests.append((body, self.headers.get("Authorization", "")))
                judge.entered.set()
                judge.hold.wait(10)
                status, data = judge.reply(body)
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/judge"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture
def judge() -> Iterator[FakeJudge]:
    fake = FakeJudge()
    yield fake
    fake.hold.set()
    fake.http.shutdown()
    fake.http.server_close()


def _served(make_server, judge: FakeJudge, **overrides: Any):  # type: ignore[no-untyped-def]
    values = {"near_miss_judge_url": judge.url, "near_miss_judge_token": "s3cret", "near_miss_judge_timeout_seconds": 2.0,
              "near_miss_judge_per_second": 1000.0, "min_similarity": 0.92, **overrides}
    return make_server(embedder=None, **values)


def _judged(server, result: str) -> float:  # type: ignore[no-untyped-def]
    value = server.metrics.registry.get_sample_value("semcache_near_miss_judge_total", {"result": result})
    return value or 0.0


def _wait_for(condition: Callable[[], bool], timeout_seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_a_near_miss_the_webhook_confirms_becomes_an_alias(make_server, judge):
    server, client = _served(make_server, judge)
    base = unit_vector(1)
    entry_id = client.store(APP, "how do I get a refund", "30 days", embedding=base).entry_id
    asker = vector_at_similarity(base, 0.9, seed=2)
    assert not client.lookup(APP, "money back?", embedding=asker).hit
    assert not client.lookup(APP, "far away", embedding=vector_at_similarity(base, 0.8, seed=3)).hit  # past the band
    assert _wait_for(lambda: _judged(server, "confirmed") == 1)
    again = client.lookup(APP, "money back?", embedding=asker)
    assert again.hit and again.response == b"30 days" and again.entry_id != entry_id
    assert len(judge.requests) == 1
    body, authorization = judge.requests[0]
    assert authorization == "Bearer s3cret"
    assert body == {
        "namespace": "app", "model": "m", "prompt_version": "v3", "query": "money back?",
        "candidate_entry_id": entry_id, "candidate_query": "how do I get a refund", "candidate_response": "30 days",
        "similarity": pytest.approx(0.9, abs=1e-4), "threshold": pytest.approx(0.92),
    }
    assert server.cache.check_consistency() == []


def test_a_refused_pair_stays_a_miss_and_is_asked_once(make_server, judge):
    server, client = _served(make_server, judge)
    judge.reply = lambda body: (200, b'{"match": false}')
    base = unit_vector(4)
    client.store(APP, "is port 22 open", "yes", embedding=base)
    closed = vector_at_similarity(base, 0.91, seed=5)
    for _ in range(3):
        assert not client.lookup(APP, "is port 22 closed", embedding=closed).hit
    assert _wait_for(lambda: _judged(server, "refused") == 1)
    time.sleep(0.2)  # room for a second call, were there one
    assert len(judge.requests) == 1 and not client.lookup(APP, "is port 22 closed", embedding=closed).hit


def test_a_stalled_judge_never_holds_a_lookup_and_a_full_queue_drops(make_server, judge):
    server, client = _served(make_server, judge, near_miss_judge_queue=1)
    judge.hold.clear()
    base = unit_vector(6)
    client.store(APP, "stored", "answer", embedding=base)
    assert not client.lookup(APP, "first", embedding=vector_at_similarity(base, 0.9, seed=7)).hit
    assert judge.entered.wait(5)  # the webhook holds the first call ...
    for i, name in enumerate(("second", "third")):  # ... and these Lookups return all the same
        assert not client.lookup(APP, name, embedding=vector_at_similarity(base, 0.9, seed=8 + i)).hit
    assert not judge.hold.is_set()
    assert _judged(server, "dropped") == 1  # "second" waits in the queue of one; "third" had no room
    judge.hold.set()
    assert _wait_for(lambda: _judged(server, "confirmed") == 2)
    assert [body["query"] for body, _ in judge.requests] == ["first", "second"]


@pytest.mark.parametrize("status,reply", [(500, b'{"match": true}'), (200, b"yes"), (200, b'{"match": "yes"}')])
def test_a_failing_judge_is_counted_and_changes_nothing(make_server, judge, status, reply):
    server, client = _served(make_server, judge)
    judge.reply = lambda body: (status, reply)
    base = unit_vector(9)
    client.store(APP, "stored", "answer", embedding=base)
    asker = vector_at_similarity(base, 0.9, seed=10)
    assert not client.lookup(APP, "asker", embedding=asker).hit
    assert _wait_for(lambda: _judged(server, "failed") == 1)
    assert not client.lookup(APP, "asker", embedding=asker).hit  # no alias; and the pair may be asked again
    assert _wait_for(lambda: _judged(server, "failed") == 2)


def test_judge_settings_are_checked_and_the_token_is_never_printed():
    for bad in ({"near_miss_judge_url": "ftp://judge"}, {"near_miss_judge_band": 0.0},
                {"near_miss_judge_per_second": 0.0}, {"near_miss_judge_queue": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            Settings().with_overrides(**bad)
    shown = Settings().with_overrides(
        near_miss_judge_url="https://user:pw@judge.internal/check", near_miss_judge_token="s3cret",
    ).redacted()
    assert "s3cret" not in json.dumps(shown) and "pw" not in shown["near_miss_judge_url"]
