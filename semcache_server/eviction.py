"""The eviction policy: per-namespace LFU queues (`lfu_queue.LfuQueue`, with aging)
under per-namespace and whole-server budgets. Pure policy: no I/O, time is passed in."""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
from collections.abc import Iterator

from semcache_server.lfu_queue import LfuQueue, TrackedEntry


class Budget:
    """Entry and byte limits of one scope; 0 means unlimited."""

    def __init__(self, max_entries: int = 0, max_bytes: int = 0) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes

    def exceeded(self, entries: int, total_bytes: int) -> bool:
        return (self.max_entries > 0 and entries > self.max_entries) or (
            self.max_bytes > 0 and total_bytes > self.max_bytes
        )


@dataclasses.dataclass(frozen=True)
class Victim:
    entry_id: int
    namespace: str
    entry: TrackedEntry


class EvictionPolicy:
    """Per-namespace LFU queues under per-namespace and whole-server budgets.

    A namespace over its own budget loses its own entries, so one tenant cannot
    evict everyone else; the server over its budget loses the least valuable
    entry of any namespace.

    Nothing here costs time in proportion to the number of namespaces (a cache
    with a namespace per tenant can have tens of thousands): the byte total is
    kept as entries come and go, and the least valuable entry of any namespace
    comes from `_tops`, a heap of (node, namespace) records in which every
    non-empty queue has a record no greater than its current top. A record
    whose queue's top has since moved is replaced when it reaches the front.
    (Summing every queue per Store and scanning every queue per victim made a Store
    at the server budget take 17.4 ms at p50 with 20,000 namespaces, against 0.27 ms
    now: `python bench/namespaces.py`.)
    """

    def __init__(self, half_life_seconds: float, server_budget: Budget, namespace_budgets: dict[str, Budget]) -> None:
        self.half_life_seconds = half_life_seconds
        self.server_budget = server_budget
        self.namespace_budgets = namespace_budgets
        self._queues: dict[str, LfuQueue] = {}
        self._namespace_of: dict[int, str] = {}
        self._bulk = False
        self._total_bytes = 0
        self._tops: list[tuple[tuple[float, float, int], str]] = []

    @property
    def entries(self) -> int:
        return len(self._namespace_of)

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self._namespace_of

    @property
    def total_bytes(self) -> int:
        return self._total_bytes

    def queue(self, namespace: str) -> LfuQueue:
        queue = self._queues.get(namespace)
        if queue is None:
            queue = self._queues[namespace] = LfuQueue(self.half_life_seconds)
        if self._bulk:
            queue.begin_bulk()
        return queue

    def _top_before(self, queue: LfuQueue) -> tuple[float, float, int] | None:
        """The queue's top before a change (not looked at inside bulk(): that would order it)."""
        return None if self._bulk else queue.peek()

    def _after_change(
        self, namespace: str, queue: LfuQueue, top_before: tuple[float, float, int] | None, bytes_before: int
    ) -> None:
        """Keep the byte total, and a record in _tops no greater than the queue's new top."""
        self._total_bytes += queue.total_bytes - bytes_before
        if self._bulk:
            return  # bulk() rebuilds _tops at its end
        top = queue.peek()
        if top is not None and (top_before is None or top < top_before):
            heapq.heappush(self._tops, (top, namespace))
            if len(self._tops) > 2 * len(self._queues) + 1024:  # stale records: start afresh
                self._rebuild_tops()

    def _order_all(self) -> None:
        """Order every queue a bulk restore left unordered, and index their tops afresh."""
        for queue in self._queues.values():
            queue.end_bulk()
        self._rebuild_tops()

    def _rebuild_tops(self) -> None:
        self._tops = [(top, ns) for ns, q in self._queues.items() if (top := q.peek()) is not None]
        heapq.heapify(self._tops)

    def add(
        self, namespace: str, entry_id: int, size_bytes: int, now: float,
        score: float | None = None, last_used_at: float | None = None,
    ) -> None:
        self.remove(entry_id)
        queue = self.queue(namespace)
        top_before, bytes_before = self._top_before(queue), queue.total_bytes
        queue.add(entry_id, size_bytes, now, score, last_used_at)
        self._after_change(namespace, queue, top_before, bytes_before)
        self._namespace_of[entry_id] = namespace

    @contextlib.contextmanager
    def bulk(self) -> Iterator[None]:
        """Adds inside this block (a restart's restore) are ordered once at its end:
        one heapify per namespace instead of a sift per entry."""
        self._bulk = True
        try:
            yield
        finally:
            self._bulk = False
            self._order_all()

    def hit(self, entry_id: int, now: float) -> float | None:
        """Record a hit; the new score, or None for an entry not tracked."""
        namespace = self._namespace_of.get(entry_id)
        if namespace is None:
            return None
        # A hit never lowers its queue's top (LfuQueue.hit), so _tops needs no update.
        return self._queues[namespace].hit(entry_id, now)

    def remove(self, entry_id: int) -> Victim | None:
        namespace = self._namespace_of.pop(entry_id, None)
        if namespace is None:
            return None
        queue = self._queues[namespace]
        top_before, bytes_before = self._top_before(queue), queue.total_bytes
        entry = queue.remove(entry_id)
        self._after_change(namespace, queue, top_before, bytes_before)
        return None if entry is None else Victim(entry_id, namespace, entry)

    def _pop(self, namespace: str) -> Victim | None:
        """Untrack and return the least valuable entry of one namespace."""
        queue = self._queues[namespace]
        top_before, bytes_before = self._top_before(queue), queue.total_bytes
        popped = queue.pop()
        self._after_change(namespace, queue, top_before, bytes_before)
        if popped is None:
            return None
        del self._namespace_of[popped[0]]
        return Victim(popped[0], namespace, popped[1])

    def too_large(self, namespace: str, size_bytes: int) -> int:
        """The byte budget a single entry of size_bytes can never fit in, or 0 if it fits."""
        for budget in (self.namespace_budgets.get(namespace), self.server_budget):
            if budget is not None and budget.max_bytes and size_bytes > budget.max_bytes:
                return budget.max_bytes
        return 0

    def choose_victims(self, namespace: str, incoming_bytes: int) -> list[Victim]:
        """Untrack and return the entries to evict so one more entry fits every budget.

        Call restore() with them if they could not be deleted after all.
        """
        victims: list[Victim] = []
        budget = self.namespace_budgets.get(namespace)
        if budget is not None:
            queue = self.queue(namespace)
            while budget.exceeded(len(queue) + 1, queue.total_bytes + incoming_bytes):
                victim = self._pop(namespace)
                if victim is None:
                    break
                victims.append(victim)
        entries, total_bytes = self.entries + 1, self.total_bytes + incoming_bytes
        while self.server_budget.exceeded(entries, total_bytes):
            popped = self.lowest(1)
            if not popped:
                break
            victims.extend(popped)
            entries -= 1
            total_bytes -= popped[0].entry.size_bytes
        return victims

    def lowest(self, count: int) -> list[Victim]:
        """Untrack and return up to `count` of the least valuable entries, any namespace."""
        if self._bulk:
            self._order_all()
        victims: list[Victim] = []
        while len(victims) < count and self._tops:
            node, namespace = self._tops[0]
            top = self._queues[namespace].peek()
            if top != node:  # stale: the queue's top moved up (or it is empty)
                if top is None:
                    heapq.heappop(self._tops)
                else:
                    heapq.heapreplace(self._tops, (top, namespace))
                continue
            # node is no greater than every other queue's top, and is this queue's top.
            victim = self._pop(namespace)
            assert victim is not None
            victims.append(victim)
        return victims

    def frequency(self, entry_id: int, now: float) -> float | None:
        namespace = self._namespace_of.get(entry_id)
        return None if namespace is None else self._queues[namespace].frequency(entry_id, now)

    def restore(self, victims: list[Victim]) -> None:
        """Track again entries that were untracked but not deleted after all."""
        for v in victims:
            self.add(v.namespace, v.entry_id, v.entry.size_bytes, v.entry.last_used_at, v.entry.score, v.entry.last_used_at)
