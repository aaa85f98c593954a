"""The LFU policy on its own, with time passed in by hand."""

from __future__ import annotations

import gc
import math
import random

import pytest

from semcache_server.eviction import Budget, EvictionPolicy
from semcache_server.lfu_queue import LfuQueue

DAY = 86400.0


def test_frequency_halves_each_half_life_without_hits():
    queue = LfuQueue(half_life_seconds=DAY)
    queue.add(1, 100, now=0.0)
    for _ in range(7):
        queue.hit(1, now=0.0)
    assert queue.frequency(1, 0.0) == pytest.approx(8.0)
    assert queue.frequency(1, DAY) == pytest.approx(4.0)
    assert queue.frequency(1, 3 * DAY) == pytest.approx(1.0)
    queue.hit(1, now=3 * DAY)
    assert queue.frequency(1, 3 * DAY) == pytest.approx(2.0)


def test_least_frequent_goes_first_and_ties_go_to_least_recently_used():
    queue = LfuQueue(half_life_seconds=DAY)
    queue.add(1, 10, now=100.0)
    queue.add(2, 10, now=100.0)
    queue.add(3, 10, now=100.0)
    queue.hit(1, now=101.0)
    assert queue.pop()[0] == 2  # 2 and 3 tie on frequency and recency: the lower id is stable
    queue.add(4, 10, now=100.0, score=queue.new_score(100.0), last_used_at=50.0)
    assert queue.pop()[0] == 4  # same score as 3, used longer ago
    assert queue.pop()[0] == 3
    assert queue.pop()[0] == 1
    assert queue.pop() is None


def test_aging_lets_a_formerly_hot_idle_entry_leave():
    queue = LfuQueue(half_life_seconds=DAY)
    queue.add(1, 10, now=0.0)
    for _ in range(50):
        queue.hit(1, now=0.0)
    queue.add(2, 10, now=1.0)
    assert queue.peek()[2] == 2  # still hot
    queue.add(3, 10, now=7 * DAY)  # a week later, 51 hits have decayed below one fresh store
    assert [queue.pop()[0] for _ in range(3)] == [2, 1, 3]


def test_many_hits_keep_the_heap_bounded_and_ordered():
    queue = LfuQueue(half_life_seconds=DAY)
    for entry_id in range(100):
        queue.add(entry_id, 1, now=0.0)
    for round_ in range(50):
        for entry_id in range(0, 100, 2):
            queue.hit(entry_id, now=float(round_))
    # One node per entry, whatever the number of hits: nothing to rebuild later (a heap
    # that grew by a tuple per hit was rebuilt in the request path, ~0.7 s at 1M entries).
    assert len(queue._heap) == len(queue) == 100
    popped = [queue.pop()[0] for _ in range(50)]
    assert sorted(popped) == list(range(1, 100, 2))  # the never-hit ones first


def test_server_budget_evicts_the_least_valuable_entry_of_any_namespace():
    policy = EvictionPolicy(DAY, Budget(max_entries=3), {})
    policy.add("a", 1, 10, now=0.0)
    policy.add("b", 2, 10, now=1.0)
    policy.add("b", 3, 10, now=2.0)
    policy.hit(1, now=3.0)
    victims = policy.choose_victims("a", incoming_bytes=10)
    assert [v.entry_id for v in victims] == [2]
    assert 2 not in policy and policy.entries == 2


def test_namespace_budget_only_evicts_that_namespace():
    policy = EvictionPolicy(DAY, Budget(), {"small": Budget(max_entries=2)})
    policy.add("big", 1, 10, now=0.0)  # the least valuable overall
    policy.add("small", 2, 10, now=1.0)
    policy.add("small", 3, 10, now=2.0)
    assert [v.entry_id for v in policy.choose_victims("small", 10)] == [2]
    assert policy.choose_victims("big", 10) == []


def test_byte_budget_and_entries_larger_than_a_budget():
    policy = EvictionPolicy(DAY, Budget(max_bytes=100), {"ns": Budget(max_bytes=50)})
    for entry_id in range(1, 5):
        policy.add("other", entry_id, 20, now=float(entry_id))
    assert [v.entry_id for v in policy.choose_victims("other", 50)] == [1, 2]  # 80 + 50 > 100
    assert policy.total_bytes == 40
    assert policy.too_large("ns", 51) == 50
    assert policy.too_large("other", 101) == 100
    assert policy.too_large("other", 100) == 0


def test_restore_puts_victims_back_with_their_scores():
    policy = EvictionPolicy(DAY, Budget(max_entries=1), {})
    policy.add("a", 1, 10, now=0.0)
    policy.hit(1, now=0.0)
    victims = policy.choose_victims("a", 10)
    assert policy.entries == 0
    policy.restore(victims)
    assert policy.frequency(1, 0.0) == pytest.approx(2.0)
    assert math.isclose(policy.total_bytes, 10)


@pytest.mark.parametrize("seed", range(5))
def test_the_heap_always_yields_what_a_full_scan_would(seed):
    """Congruence with brute force: after any mix of adds, restores, hits, removes and
    pops, the next victim is the entry with the smallest (score, last_used_at, id), as
    kept by a plain dict beside the queue."""
    rng = random.Random(seed)
    queue = LfuQueue(half_life_seconds=100.0)
    model: dict[int, tuple[float, float]] = {}  # entry id -> (score, last_used_at)

    def scan() -> tuple[float, float, int]:
        return min((score, last_used_at, i) for i, (score, last_used_at) in model.items())

    now = 0.0
    for step in range(3000):
        now += rng.random()
        action = rng.random()
        if action < 0.3 or not model:
            entry_id = rng.randrange(400)  # sometimes an id already tracked: add replaces it
            restored = rng.random() < 0.3
            score = rng.uniform(-5, 20) if restored else None
            last_used_at = rng.uniform(0, now) if restored else None
            queue.add(entry_id, 1, now, score=score, last_used_at=last_used_at)
            model[entry_id] = (queue.new_score(now) if score is None else score, now if last_used_at is None else last_used_at)
        elif action < 0.75:
            entry_id = rng.choice(sorted(model))
            new_score = queue.hit(entry_id, now)
            assert new_score == queue.score_after_hit(model[entry_id][0], now)
            model[entry_id] = (new_score, now)
        elif action < 0.9:
            entry_id = rng.choice(sorted(model))
            removed = queue.remove(entry_id)
            assert removed is not None and (removed.score, removed.last_used_at) == model.pop(entry_id)
        else:
            expected = scan()
            entry_id, entry = queue.pop()
            assert (entry.score, entry.last_used_at, entry_id) == expected, step
            del model[entry_id]
        assert len(queue) == len(model) == len(queue._heap)
        if model:
            assert queue.peek() == scan()
            probe = rng.choice(sorted(model))
            assert (queue.tracked(probe).score, queue.tracked(probe).last_used_at) == model[probe]


def test_no_object_per_entry_for_the_garbage_collector_to_walk():
    """A full collection walks every tracked object with the GIL held: per-entry lists
    and dataclasses made it ~300 ms at a million entries. Tuples of numbers are
    untracked after one collection, dicts of ints never tracked."""
    policy = EvictionPolicy(DAY, Budget(), {})
    with policy.bulk():
        for entry_id in range(5000):
            policy.add("restored", entry_id, 100, now=0.0, score=float(entry_id % 7), last_used_at=1.0)
    for entry_id in range(5000, 10_000):
        policy.add("stored", entry_id, 100, now=float(entry_id))
    for entry_id in range(0, 10_000, 3):
        policy.hit(entry_id, now=20_000.0)
    gc.collect()
    queues = [policy.queue("restored"), policy.queue("stored")]
    tracked_nodes = sum(1 for q in queues for node in q._heap if gc.is_tracked(node))
    assert tracked_nodes == 0
    assert not any(gc.is_tracked(q._position) or gc.is_tracked(q._size_bytes) for q in queues)


def test_a_bulk_restore_orders_once_and_then_behaves_like_adds_one_by_one():
    rng = random.Random(7)
    rows = [(rng.choice("ab"), entry_id, rng.uniform(0, 50), rng.uniform(0, 100)) for entry_id in range(500)]
    bulk = EvictionPolicy(DAY, Budget(), {})
    single = EvictionPolicy(DAY, Budget(), {})
    with bulk.bulk():
        for namespace, entry_id, score, last_used_at in rows:
            bulk.add(namespace, entry_id, 1, 0.0, score=score, last_used_at=last_used_at)
        bulk.hit(3, now=200.0)  # an operation inside the block orders that queue first
        bulk.add("a", 3, 1, 0.0, score=1.0, last_used_at=1.0)  # re-adding a tracked id replaces it
    for namespace, entry_id, score, last_used_at in rows:
        single.add(namespace, entry_id, 1, 0.0, score=score, last_used_at=last_used_at)
    single.hit(3, now=200.0)
    single.add("a", 3, 1, 0.0, score=1.0, last_used_at=1.0)
    order = [v.entry_id for v in bulk.lowest(500)]
    assert order == [v.entry_id for v in single.lowest(500)]
    assert len(order) == 500 and bulk.entries == 0


def test_a_clock_that_steps_back_by_years_never_breaks_a_hit():
    """Scores are log2(frequency) + t / half_life: a hit when the clock reads far earlier
    than when an entry was scored (a host booting with its clock unset, then restoring
    the cache) puts 2 ** (score - age) past a float's range. The hit must still count."""
    queue = LfuQueue(half_life_seconds=60.0)
    stored_at = 1.8e9  # 2027
    queue.add(1, 100, now=stored_at)
    queue.add(2, 100, now=stored_at)
    for _ in range(3):
        queue.hit(1, now=0.0)  # the epoch: 30 million half-lives earlier
    assert math.isfinite(queue.tracked(1).score)
    # A hit never makes an entry look less valuable (its last use does not move back).
    assert queue.tracked(1).score >= queue.tracked(2).score
    assert queue.tracked(1).last_used_at == stored_at
    assert queue.frequency(1, 0.0) == math.inf
    assert queue.score_after_hit(queue.new_score(0.0), 0.0) == pytest.approx(1.0)  # log2(1 + 1)
    assert queue.score_after_hit(-1e9, 0.0) == pytest.approx(0.0)  # long idle: frequency 0, then 1


@pytest.mark.parametrize("seed", range(4))
def test_the_least_valuable_entry_of_any_namespace_is_what_a_full_scan_would_give(seed):
    """Congruence with brute force across many namespaces: after any mix of adds,
    restores (scores below every top), hits, removes, namespace-budget pops, bulk
    restores and server-wide victims, lowest() gives the smallest (score, last_used_at,
    id) of all entries, and total_bytes their sum."""
    rng = random.Random(seed)
    policy = EvictionPolicy(100.0, Budget(), {"capped": Budget(max_entries=5)})
    model: dict[int, tuple[str, float, float, int]] = {}  # id -> (namespace, score, last_used_at, bytes)
    namespaces = ["capped"] + [f"tenant-{i}" for i in range(30)]

    def scan() -> tuple[float, float, int]:
        return min((score, last_used_at, i) for i, (_, score, last_used_at, _) in model.items())

    def sync_from_policy(entry_id: int, namespace: str, size: int) -> None:
        entry = policy._queues[namespace].tracked(entry_id)
        model[entry_id] = (namespace, entry.score, entry.last_used_at, size)

    now = 0.0
    for step in range(4000):
        now += rng.random()
        action = rng.random()
        if action < 0.35 or not model:
            namespace, entry_id, size = rng.choice(namespaces), rng.randrange(600), rng.randrange(1, 50)
            for victim in policy.choose_victims(namespace, size):
                assert victim.namespace == "capped" and model.pop(victim.entry_id)[0] == "capped"
            restored = rng.random() < 0.3
            score = rng.uniform(-5, now / 100) if restored else None
            model.pop(entry_id, None)
            policy.add(namespace, entry_id, size, now, score=score, last_used_at=rng.uniform(0, now) if restored else None)
            sync_from_policy(entry_id, namespace, size)
        elif action < 0.7:
            entry_id = rng.choice(sorted(model))
            policy.hit(entry_id, now if rng.random() < 0.95 else -1e6)  # sometimes a clock far behind
            sync_from_policy(entry_id, model[entry_id][0], model[entry_id][3])
        elif action < 0.8:
            entry_id = rng.choice(sorted(model))
            assert policy.remove(entry_id).entry_id == entry_id
            del model[entry_id]
        elif action < 0.83:
            with policy.bulk():
                for entry_id in rng.sample(range(600, 700), 10):
                    if entry_id not in model:
                        namespace = rng.choice(namespaces[1:])
                        policy.add(namespace, entry_id, 1, now, score=rng.uniform(-5, 5), last_used_at=now)
                        sync_from_policy(entry_id, namespace, 1)
        else:
            expected = scan()
            (victim,) = policy.lowest(1)
            assert (victim.entry.score, victim.entry.last_used_at, victim.entry_id) == expected, step
            del model[victim.entry_id]
        assert policy.entries == len(model)
        assert policy.total_bytes == sum(size for *_, size in model.values())
        assert len(policy._tops) <= 2 * len(policy._queues) + 1025
    order = [(v.entry.score, v.entry.last_used_at, v.entry_id) for v in policy.lowest(len(model) + 1)]
    assert order == sorted(order) and len(order) == len(model)


def test_many_namespaces_do_not_make_a_store_slower():
    """Choosing victims under a server budget used to sum every namespace's bytes and
    scan every namespace's top: with 20,000 namespaces that was ~40,000 steps per Store.
    Counted in steps (queue peeks), not timed: the count must not grow with namespaces."""
    namespaces = 20_000
    policy = EvictionPolicy(DAY, Budget(max_entries=namespaces), {})
    for i in range(namespaces):
        policy.add(f"tenant-{i}", i, 10, now=float(i))
    peeks = 0
    original = LfuQueue.peek

    def counting_peek(self):
        nonlocal peeks
        peeks += 1
        return original(self)

    LfuQueue.peek = counting_peek
    try:
        for i in range(100):  # at the budget: every add evicts the least valuable entry of any namespace
            victims = policy.choose_victims("tenant-0", 10)
            assert [v.entry_id for v in victims] == [i]
            policy.add("tenant-0", namespaces + i, 10, now=1e6 + i)
    finally:
        LfuQueue.peek = original
    assert peeks < 100 * 10
