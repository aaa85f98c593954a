"""Shadow checks for `Client.get_or_compute(..., audit_rate=...)`, off the caller's path.

The server draws which Lookups are audited (LookupResponse.audit: a uniform sample of
those near or over the threshold, so the verdicts estimate its false-hit rate). For an
audited hit the caller gets the cached answer at once, and a background thread calls the
model anyway and sends the verdict; for an audited miss the caller's fresh answer is
compared with the best candidate's (LookupResponse.audit_response), also in the
background. `same(fresh, cached)` is the app's equivalence; without one the server
compares the two answers' embeddings (FeedbackRequest.fresh_response). Each audited hit
costs one extra model call; Stats counts them (NamespaceCalibration.audits_total).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("semcache")

# Audits in flight at once per client; a drawn one past it is skipped (and logged).
MAX_AUDITS_IN_FLIGHT = 16

Same = Callable[[Any, Any], bool]


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

    def miss(self, partition: Any, lookup_id: str, fresh: Any, candidate: Any, same: Same | None) -> None:
        """An audited miss: would its best candidate's answer have been right?"""
        self._submit(lambda: self._judge(partition, lookup_id, fresh, candidate, same))

    def close(self, wait: bool = True) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait)

    def _judge(self, partition: Any, lookup_id: str, fresh: Any, cached: Any, same: Same | None) -> None:
        correct, fresh_response = verdict(fresh, cached, same)
        self._feedback(partition, lookup_id, correct, fresh_response=fresh_response)

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
