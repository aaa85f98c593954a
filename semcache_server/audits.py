"""Shadow checks for `Client.get_or_compute(..., audit_rate=...)`, off the caller's path.

The server draws which Lookups are audited (LookupResponse.audit: a uniform sample of
those near or over the threshold, so the verdicts estimate its false-hit rate). For an
audited hit the caller gets the cached answer at once, and a background thread calls the
model anyway and sends the verdict; for an audited miss the caller's fresh answer is
compared with the best candidate's (LookupResponse.audit_response), also in the
background. `same(fresh, cached)` is the app's equivalence; without one the server
compares the two answers' embeddings (FeedbackRequest.fresh_response). Each audited hit
costs one extra model call; Stats counts them (NamespaceCalibration.audits_total).

The judge of near misses (`get_or_compute(..., judge=...)`) is the app's stronger look at
a miss whose best candidate came just under the threshold (LookupResponse.near_miss_*):
`judge(query, candidate_query, candidate_answer)` says whether that answer answers the
query (an LLM judge, a rule of the app's). It runs in the background, after the caller's
answer is computed and stored; when it says yes, Feedback's should_match_entry_id makes
the query an alias of the candidate (replacing the fresh entry of the same question),
so the next asker of it, or of a paraphrase nearer to it, is served that answer. An
audited miss sends the judge's finding with the audit's verdict, in one Feedback. The
alias carries the query, key and embedding again, so it works even when the server
restarted, or another frontend answers, while the judge was thinking.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("semcache")

# Audits in flight at once per client; a drawn one past it is skipped (and logged).
MAX_AUDITS_IN_FLIGHT = 16

Same = Callable[[Any, Any], bool]
# (the missed query, the near miss's query, its answer) -> does that answer the query?
Judge = Callable[[str, str, Any], Any]  # a bool (or, for the asyncio client, an awaitable of one)


@dataclasses.dataclass(frozen=True)
class MissCheck:
    """What a miss's background check needs: the caller's fresh answer, the audit's
    candidate answer (None: not audited), and the near miss for the judge (None: none)."""

    lookup_id: str
    query: str
    fresh: Any
    audit_candidate: Any | None
    near_miss: tuple[str, str, Any] | None  # (entry_id, query, answer)
    key: Any = None  # the Lookup's request key and embedding, sent with an alias
    embedding: Any = None


def miss_check(
    found: Any, query: str, fresh: Any, judged: bool, key: Any = None, embedding: Any = None,
) -> MissCheck | None:
    """The check a missed LookupResponse asks for (None: nothing to check). judged: the
    caller has a judge. Answers are str where the fresh one is, else bytes. key and
    embedding: the Lookup's, sent again with an alias (the server may have lost it)."""
    def as_value(raw: bytes) -> Any:
        return raw.decode("utf-8", "replace") if isinstance(fresh, str) else raw

    audit_candidate = as_value(found.audit_response) if found.audit and found.audit_entry_id else None
    near_miss = None
    if judged and found.near_miss_entry_id:
        near_miss = (found.near_miss_entry_id, found.near_miss_query, as_value(found.near_miss_response))
    if audit_candidate is None and near_miss is None:
        return None
    return MissCheck(found.lookup_id, query, fresh, audit_candidate, near_miss, key, embedding)


def miss_feedback(check: MissCheck, same: Same | None, confirmed: bool) -> dict[str, Any] | None:
    """Feedback's arguments for a checked miss (None: nothing to send). confirmed: the
    judge found the near miss answers the query."""
    should_match = check.near_miss[0] if confirmed and check.near_miss is not None else ""
    alias = {"should_match_entry_id": should_match, "query": check.query, "key": check.key, "embedding": check.embedding}
    if check.audit_candidate is not None:
        correct, fresh_response = verdict(check.fresh, check.audit_candidate, same)
        return {"correct": correct, "fresh_response": fresh_response, **(alias if should_match else {})}
    if should_match:
        return {"correct": True, **alias}
    return None


def verdict(fresh: Any, cached: Any, same: Same | None) -> tuple[bool, Any]:
    """Feedback's (correct, fresh_response): the app's own judgement, or the fresh answer
    for the server to compare (correct is then ignored)."""
    if same is not None:
        return bool(same(fresh, cached)), b""
    return False, fresh


class Audits:
    def __init__(self, feedback: Callable[..., Any]) -> None:
        self._feedback = feedback  # Client.feedback
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._in_flight = 0
        self.skipped = 0

    def hit(self, partition: Any, lookup_id: str, cached: Any, compute: Callable[[], Any], same: Same | None) -> None:
        """An audited hit: compute the answer anyway and judge the cached one."""
        self._submit(lambda: self._judge(partition, lookup_id, compute(), cached, same))

    def miss(self, partition: Any, check: MissCheck | None, same: Same | None, judge: Judge | None) -> None:
        """A miss: would its best candidate's answer have been right (an audit), and does
        the near miss answer the query (the judge)?"""
        if check is not None:
            self._submit(lambda: self._check_miss(partition, check, same, judge))

    def close(self, wait: bool = True) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait)

    def _judge(self, partition: Any, lookup_id: str, fresh: Any, cached: Any, same: Same | None) -> None:
        correct, fresh_response = verdict(fresh, cached, same)
        self._feedback(partition, lookup_id, correct, fresh_response=fresh_response)

    def _check_miss(self, partition: Any, check: MissCheck, same: Same | None, judge: Judge | None) -> None:
        confirmed = False
        if judge is not None and check.near_miss is not None:
            _, candidate_query, candidate = check.near_miss
            confirmed = bool(judge(check.query, candidate_query, candidate))
        arguments = miss_feedback(check, same, confirmed)
        if arguments is not None:
            self._feedback(partition, check.lookup_id, **arguments)

    def _submit(self, audit: Callable[[], None]) -> None:
        with self._lock:
            if self._in_flight >= MAX_AUDITS_IN_FLIGHT:
                self.skipped += 1
                log.warning("an audit was skipped: %d already in flight", self._in_flight)
                return
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="semcache-audit")
            self._in_flight += 1
            pool = self._pool
        pool.submit(self._run, audit)

    def _run(self, audit: Callable[[], None]) -> None:
        try:
            audit()
        except Exception as e:  # an audit never fails the app: its verdict is just not sent
            log.warning("an audit failed: %s", e)
        finally:
            with self._lock:
                self._in_flight -= 1
