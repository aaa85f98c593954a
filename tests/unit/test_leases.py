"""Single-flight leases: one holder per question, waiters woken by its Store, expiry."""

from __future__ import annotations

import threading
import time

import numpy as np

from semcache_server.leases import EXPIRED, RELEASED, STORED, LeaseTable
from semcache_server.partition import PartitionKey

KEY = PartitionKey("ns", "m", "")
QUESTION = (KEY, "", "what is the refund policy")


def test_first_claim_holds_the_lease_the_next_joins_it():
    table = LeaseTable(lease_seconds=60, max_waiters=4)
    first = table.claim(QUESTION, None, None)
    second = table.claim(QUESTION, None, None)
    assert first.mine and not second.mine and second.lease is first.lease
    assert table.claim((KEY, "other-key", QUESTION[2]), None, None).mine  # another request key: another question


def test_a_store_wakes_every_waiter():
    table = LeaseTable(lease_seconds=60, max_waiters=8)
    lease = table.claim(QUESTION, None, None).lease
    woke = []

    def waiter() -> None:
        woke.append(table.wait(lease, time.monotonic() + 10))

    threads = [threading.Thread(target=waiter) for _ in range(5)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    table.complete(QUESTION)
    for t in threads:
        t.join(5)
    assert woke == [True] * 5 and lease.outcome == STORED
    assert table.claim(QUESTION, None, None).mine  # ended: the next miss leads


def test_wait_runs_out_and_waiters_are_bounded():
    table = LeaseTable(lease_seconds=60, max_waiters=0)
    lease = table.claim(QUESTION, None, None).lease
    assert table.wait(lease, time.monotonic() + 5) is False and table.refused_waits == 1
    table = LeaseTable(lease_seconds=60, max_waiters=1)
    lease = table.claim(QUESTION, None, None).lease
    started = time.monotonic()
    assert table.wait(lease, started + 0.1) is False
    assert time.monotonic() - started < 2


def test_a_lease_expires_when_its_holder_never_stores():
    now = [0.0]
    table = LeaseTable(lease_seconds=5, max_waiters=2, clock=lambda: now[0])
    lease = table.claim(QUESTION, None, None).lease
    now[0] = 6.0
    assert table.wait(lease, 100.0) is True and lease.outcome == EXPIRED
    assert table.claim(QUESTION, None, None).mine and table.expired == 1


def test_release_is_namespace_checked():
    table = LeaseTable(lease_seconds=60, max_waiters=2)
    lease = table.claim(QUESTION, None, None).lease
    assert table.release(lease.id, "another") is False
    assert table.release(lease.id, "ns") is True and lease.outcome == RELEASED
    assert table.release(lease.id, "ns") is False


def test_semantic_claim_joins_a_similar_question_only():
    table = LeaseTable(lease_seconds=60, max_waiters=2)
    base = np.array([1.0, 0.0], dtype=np.float32)
    near = np.array([0.96, 0.28], dtype=np.float32)
    far = np.array([0.6, 0.8], dtype=np.float32)
    holder = table.claim(QUESTION, base, 0.9).lease
    assert table.claim((KEY, "", "refund policy?"), near, 0.9).lease is holder
    assert table.claim((KEY, "", "shipping times"), far, 0.9).mine
    assert table.claim((KEY, "", "refund policy??"), near, None).mine  # exact mode: text must agree
