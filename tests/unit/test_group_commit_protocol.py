"""The group-commit protocol on its own (a commit function that only marks jobs done):
every caller returns only once its jobs are done, concurrent callers share commits,
and a failing commit never leaves a caller waiting."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np

from semcache_server.entries import StoreResult
from semcache_server.group_commit import GroupCommit, StoreJob
from semcache_server.partition import PartitionKey
from semcache_server.v1.records_pb2 import EntryRecord

KEY = PartitionKey("ns", "m", "v")


def _job(n: int) -> StoreJob:
    return StoreJob(KEY, EntryRecord(query=f"q{n}"), np.zeros(1, dtype=np.float32), 1)


def test_concurrent_callers_share_commits_and_each_returns_done():
    batches: list[int] = []
    handed_on: list[list[str]] = []

    def commit_batch(jobs: list[StoreJob]) -> list[str]:
        time.sleep(0.01)  # as a sync would take
        batches.append(len(jobs))
        for job in jobs:
            job.result, job.done = StoreResult(job.record.query, False, 0.0, ""), True
        return [f"after {len(batches)}"]

    group = GroupCommit(threading.Lock(), commit_batch, handed_on.append)
    finished: list[StoreJob] = []

    def caller(n: int) -> None:
        jobs = [_job(n)]
        group.commit(jobs)
        assert jobs[0].done and jobs[0].result is not None
        finished.extend(jobs)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(finished) == 16 and sum(batches) == 16
    assert len(batches) < 16  # some commits carried several callers' jobs
    assert len(handed_on) == len(batches)


def test_a_commit_that_raises_fails_its_jobs_and_the_next_caller_still_commits():
    calls = [0]

    def commit_batch(jobs: list[StoreJob]) -> list[object]:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("disk error")
        for job in jobs:
            job.done = True
        return []

    group = GroupCommit(threading.Lock(), commit_batch, lambda _: None)
    first = [_job(1)]
    with contextlib.suppress(RuntimeError):
        group.commit(first)
    assert first[0].done and first[0].error is not None  # failed, not left waiting
    second = [_job(2)]
    group.commit(second)
    assert second[0].done and second[0].error is None
