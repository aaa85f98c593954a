"""The server's judge of near misses: a webhook the app runs (an LLM judge, a rule of its
own), asked off the Lookup's path about a miss whose best candidate came within
`near_miss_judge_band` under the threshold. A yes makes the missed query an alias of
that candidate, so the next asker of it is served the candidate's answer. The clients'
`judge=` callback (semcache_server/audits.py) does the same from the app's side; this
one needs no client change.

    POST near_miss_judge_url  (Authorization: Bearer near_miss_judge_token, when set)
    {"namespace", "model", "prompt_version", "query", "candidate_entry_id",
     "candidate_query", "candidate_response" (UTF-8; bytes that are not are replaced),
     "similarity", "threshold"}
    -> 2xx, {"match": true | false}

Anything else (another status, no JSON, no boolean "match", a timeout) counts as failed
and is logged; the pair may be asked again by a later miss. Bounded everywhere: one
worker thread, at most `near_miss_judge_per_second` calls, a queue of
`near_miss_judge_queue` (a miss past it is dropped, counted), and a pair already asked
(or waiting) is not asked again while it is among the newest 10,000 remembered. Each
outcome is counted in `semcache_near_miss_judge_total{result}`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import http.client
import json
import logging
import queue
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from semcache_server.errors import SemcacheError
from semcache_server.feedback import LoggedLookup

log = logging.getLogger("semcache")

# Pairs remembered as asked, so a popular question that keeps missing is judged once.
REMEMBERED_PAIRS = 10_000
# The most of a webhook's reply read.
MAX_REPLY_BYTES = 64 << 10
# Outcomes, the values of the metric's result label.
CONFIRMED, REFUSED, FAILED, DROPPED, ALIAS_FAILED = "confirmed", "refused", "failed", "dropped", "alias_failed"


@dataclasses.dataclass(frozen=True)
class NearMiss:
    lookup: LoggedLookup  # the missed Lookup: query, vector where needed, request key
    entry_id: int
    candidate_query: str
    candidate_response: bytes
    similarity: float
    threshold: float

    def body(self) -> bytes:
        key = self.lookup.key
        return json.dumps({
            "namespace": key.namespace, "model": key.model, "prompt_version": key.version,
            "query": self.lookup.query, "candidate_entry_id": str(self.entry_id),
            "candidate_query": self.candidate_query,
            "candidate_response": self.candidate_response.decode("utf-8", "replace"),
            "similarity": round(self.similarity, 6), "threshold": round(self.threshold, 6),
        }).encode()


class WebhookJudge:
    def __init__(
        self, url: str, *, token: str = "", timeout_seconds: float = 10.0, queue_size: int = 1000,
        per_second: float = 5.0, alias: Callable[[LoggedLookup, int], str], count: Callable[[str], None],
    ) -> None:
        self._url = url
        self._headers = {"Content-Type": "application/json", "User-Agent": "semcache-near-miss-judge"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout_seconds = timeout_seconds
        self._interval_seconds = 1.0 / per_second
        self._alias = alias  # Verdicts.judged_alias
        self._count = count
        self._queue: queue.Queue[NearMiss | None] = queue.Queue(maxsize=queue_size)
        self._asked: collections.OrderedDict[tuple[bytes, bytes, int], None] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="semcache-near-miss-judge", daemon=True)
        self._thread.start()

    def offer(self, near: NearMiss) -> None:
        """Queue a near miss for the webhook; never blocks."""
        pair = _pair(near)
        with self._lock:
            if pair in self._asked:
                return
            self._asked[pair] = None
            while len(self._asked) > REMEMBERED_PAIRS:
                self._asked.popitem(last=False)
        try:
            self._queue.put_nowait(near)
        except queue.Full:
            self._forget(pair)
            self._count(DROPPED)

    def close(self) -> None:
        """Stop after the call in flight; what still waits is dropped."""
        self._stop.set()
        with contextlib.suppress(queue.Full):  # the worker sees _stop after its call in flight
            self._queue.put_nowait(None)
        self._thread.join(self._timeout_seconds + 1.0)

    def _work(self) -> None:
        next_call = 0.0
        while not self._stop.is_set():
            near = self._queue.get()
            if near is None or self._stop.wait(max(0.0, next_call - time.monotonic())):
                return
            next_call = time.monotonic() + self._interval_seconds
            self._judge(near)

    def _judge(self, near: NearMiss) -> None:
        try:
            match = self._ask(near)
        except (OSError, http.client.HTTPException, ValueError) as e:  # urllib's errors are OSErrors; a bad reply, ValueError
            self._forget(_pair(near))
            self._count(FAILED)
            log.warning("the near-miss judge at %s failed: %s", self._url, e)
            return
        if not match:
            self._count(REFUSED)
            return
        try:
            self._alias(near.lookup, near.entry_id)
        except SemcacheError as e:  # the entry is gone, the storage is full, ...
            self._count(ALIAS_FAILED)
            log.warning("the near-miss judge confirmed entry %d, but its alias was not stored: %s", near.entry_id, e)
            return
        self._count(CONFIRMED)

    def _ask(self, near: NearMiss) -> bool:
        request = urllib.request.Request(self._url, data=near.body(), headers=self._headers, method="POST")
        with urllib.request.urlopen(request, timeout=self._timeout_seconds) as reply:  # an http(s) URL: settings_checks
            body: Any = json.loads(reply.read(MAX_REPLY_BYTES))
        match = body.get("match") if isinstance(body, dict) else None
        if not isinstance(match, bool):
            raise ValueError(f'the reply has no boolean "match": {str(body)[:200]!r}')
        return match

    def _forget(self, pair: tuple[bytes, bytes, int]) -> None:
        with self._lock:
            self._asked.pop(pair, None)


def _pair(near: NearMiss) -> tuple[bytes, bytes, int]:
    return near.lookup.key.digest(), near.lookup.digest, near.entry_id

