"""Group commit: concurrent Stores share one LMDB transaction (one fsync), each
acknowledged only after it."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from semcache_server.entries import StoreResult
from semcache_server.errors import SemcacheError
from semcache_server.partition import PartitionKey
from semcache_server.v1.records_pb2 import EntryRecord


@dataclasses.dataclass(eq=False)
class StoreJob:
    """One Store waiting for a group commit; `vector` is empty until the model computed it."""

    key: PartitionKey
    record: EntryRecord
    vector: np.ndarray
    size: int
    done: bool = False
    result: StoreResult | None = None
    error: BaseException | None = None


@dataclasses.dataclass(eq=False)
class _StoreCall:
    """One caller's jobs in the queue; `wake` is set when they are done or when the
    caller is made the next leader."""

    jobs: list[StoreJob]
    lead: bool = False
    wake: threading.Event = dataclasses.field(default_factory=threading.Event)


class GroupCommit:
    """Leader/follower: one call at a time leads, taking the whole queue into one commit;
    calls arriving meanwhile queue up and sleep on their own Event. The leader wakes
    exactly the calls it committed and makes the oldest queued call the next leader.
    (Followers used to wait on the write lock itself: one whose Store was already
    committed could lose the lock to a new leader and wait out another whole sync.)

    commit_batch(jobs) runs under write_lock, marks each job done (with a result or an
    error) and returns what to hand to after_commit once the locks are released.
    """

    def __init__(
        self,
        write_lock: threading.Lock,
        commit_batch: Callable[[list[StoreJob]], list[Any]],
        after_commit: Callable[[list[Any]], None],
    ) -> None:
        self._write_lock = write_lock
        self._commit_batch = commit_batch
        self._after_commit = after_commit
        self._queue_lock = threading.Lock()
        self._queue: list[_StoreCall] = []
        self._committing = False

    def commit(self, jobs: list[StoreJob]) -> None:
        """Commit these jobs together with every other queued one. Returns when all of
        these jobs are done."""
        if not jobs:
            return
        call = _StoreCall(jobs)
        with self._queue_lock:
            self._queue.append(call)
            if not self._committing:
                self._committing = True
                call.lead = True
        while True:
            if call.lead:
                self._lead(call)
            elif all(job.done for job in jobs):
                return
            else:
                call.wake.wait()
                call.wake.clear()

    def _lead(self, leader: _StoreCall) -> None:
        """Commit every queued call (the leader's own among them), wake them, pass the lead on."""
        calls: list[_StoreCall] = []
        handed_on: list[Any] = []
        try:
            with self._write_lock:
                with self._queue_lock:
                    calls, self._queue = self._queue, []
                handed_on = self._commit_batch([job for queued in calls for job in queued.jobs])
        finally:
            with self._queue_lock:
                leader.lead = False
                for queued in calls:
                    for job in queued.jobs:
                        if not job.done:  # commit_batch raised: never leave a caller waiting
                            job.error, job.done = SemcacheError("the commit failed; see the server log"), True
                    queued.wake.set()
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor.wake.set()
                else:
                    self._committing = False
        self._after_commit(handed_on)
