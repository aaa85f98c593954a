"""LFU eviction with exponential aging. Pure policy: no I/O, time is passed in.

Each entry's hit frequency decays by half every `half_life_seconds` without hits,
so an entry that was popular last month but is idle now does leave. Frequencies
are compared in the log domain,

    score = log2(decayed_frequency(t)) + t / half_life_seconds,

which is the same ordering at every moment (all frequencies decay at one rate),
so a score never has to be recomputed as time passes. Entries sit in a binary heap
that knows each entry's position: a hit, an add and a removal each move one entry
O(log n) steps, and nothing ever rebuilds or scans the heap. A new entry starts at
frequency 1. Ties go to the least recently used entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import math
from collections.abc import Iterator


@dataclasses.dataclass
class TrackedEntry:
    """What the policy knows of one entry (as returned by remove, pop and tracked)."""

    score: float
    last_used_at: float
    size_bytes: int


class LfuQueue:
    """The entries of one eviction scope (a namespace), cheapest to lose first.

    `_heap` is a binary min-heap of (score, last_used_at, entry_id) tuples, the only
    place an entry's score and last use are kept; `_position` maps an entry to its
    node's index, so a hit replaces that one node and re-sorts it. (It used to push
    a new tuple per hit and rebuild the heap when stale tuples outnumbered the
    entries: at a million entries one hit in a million took ~0.7 s, holding the
    lock every Lookup and Store needs.)

    Nothing here is an object the cyclic garbage collector scans per entry: tuples
    of numbers are untracked after their first collection, and dicts of ints never
    are tracked. (Mutable [score, last_used_at, id] lists plus a TrackedEntry per
    entry made each full collection walk two objects per entry: ~300 ms with the
    GIL held at a million entries, and during a bulk load one every few seconds.)
    """

    def __init__(self, half_life_seconds: float) -> None:
        if half_life_seconds <= 0:
            raise ValueError("half_life_seconds must be > 0")
        self.half_life_seconds = half_life_seconds
        self._heap: list[tuple[float, float, int]] = []  # entry ids are unique: no two nodes compare equal
        self._position: dict[int, int] = {}
        self._size_bytes: dict[int, int] = {}
        self._bulk = False  # between begin_bulk() and end_bulk(): _heap is unordered, _position unset
        self.total_bytes = 0

    def __len__(self) -> int:
        return len(self._size_bytes)

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self._size_bytes

    def score_after_hit(self, score: float, now: float) -> float:
        """The score of an entry with `score` that is hit once more at `now`."""
        age = now / self.half_life_seconds
        log_frequency = score - age  # log2 of the decayed frequency at `now`
        # log2(2 ** log_frequency + 1) + age, with 2 ** x only for x <= 0: a clock that
        # reads far earlier than when the score was made (a host booting with its clock
        # unset) would put 2 ** log_frequency past a float's range.
        if log_frequency > 0:
            return score + math.log2(1.0 + 2.0 ** -log_frequency)
        return age + math.log2(2.0 ** log_frequency + 1.0)

    def new_score(self, now: float) -> float:
        """Score of an entry stored at `now` (frequency 1)."""
        return now / self.half_life_seconds

    def tracked(self, entry_id: int) -> TrackedEntry | None:
        """The entry's score, last use and size (None when it is not tracked)."""
        size_bytes = self._size_bytes.get(entry_id)
        if size_bytes is None:
            return None
        self.end_bulk()
        score, last_used_at, _ = self._heap[self._position[entry_id]]
        return TrackedEntry(score, last_used_at, size_bytes)

    def frequency(self, entry_id: int, now: float) -> float:
        """The entry's decayed hit frequency at `now` (for stats and tests)."""
        entry = self.tracked(entry_id)
        if entry is None:
            raise KeyError(entry_id)
        try:
            return 2.0 ** (entry.score - now / self.half_life_seconds)
        except OverflowError:  # `now` is far earlier than the entry's last hit
            return math.inf

    def add(
        self, entry_id: int, size_bytes: int, now: float, score: float | None = None, last_used_at: float | None = None
    ) -> None:
        """Track an entry; score and last_used_at restore a persisted state."""
        if entry_id in self._size_bytes:
            self.remove(entry_id)
        self._size_bytes[entry_id] = size_bytes
        self.total_bytes += size_bytes
        heap = self._heap
        index = len(heap)
        node = (
            self.new_score(now) if score is None else score,
            now if last_used_at is None else last_used_at,
            entry_id,
        )
        heap.append(node)
        if self._bulk:  # ordered once, by end_bulk()
            return
        if index and node < heap[(index - 1) >> 1]:
            self._sift_up(index)
        else:  # the usual case: a new entry's score is the newest, so it stays at the bottom
            self._position[entry_id] = index

    def begin_bulk(self) -> None:
        """Many adds follow (a restart's restore): order the heap once at end_bulk()
        rather than at every add. Other calls end the bulk first."""
        self._bulk = True

    def end_bulk(self) -> None:
        if self._bulk:
            self._bulk = False
            heapq.heapify(self._heap)
            self._position = {node[2]: index for index, node in enumerate(self._heap)}

    def hit(self, entry_id: int, now: float) -> float | None:
        """Record a hit; returns the new score (None if the entry is not tracked)."""
        if entry_id not in self._size_bytes:
            return None
        self.end_bulk()
        index = self._position[entry_id]
        node = self._heap[index]
        score = self.score_after_hit(node[0], now)  # never below node[0]
        # A hit never makes an entry look less valuable: when the score cannot grow (a
        # clock reading far before its last use) the last use stays. EvictionPolicy
        # counts on a hit never lowering a queue's top.
        if score == node[0] and now < node[1]:
            now = node[1]
        self._heap[index] = (score, now, entry_id)
        self._resift(index)
        return score

    def remove(self, entry_id: int) -> TrackedEntry | None:
        size_bytes = self._size_bytes.pop(entry_id, None)
        if size_bytes is None:
            return None
        self.end_bulk()
        self.total_bytes -= size_bytes
        index = self._position.pop(entry_id)
        heap = self._heap
        score, last_used_at, _ = heap[index]
        last = heap.pop()
        if index < len(heap):  # the removed node was not the last: the last takes its place
            heap[index] = last
            self._position[last[2]] = index
            self._resift(index)
        return TrackedEntry(score, last_used_at, size_bytes)

    def peek(self) -> tuple[float, float, int] | None:
        """(score, last_used_at, entry_id) of the next victim, or None when empty."""
        self.end_bulk()
        return self._heap[0] if self._heap else None

    def pop(self) -> tuple[int, TrackedEntry] | None:
        """Remove and return the entry to evict next."""
        top = self.peek()
        if top is None:
            return None
        entry = self.remove(top[2])
        assert entry is not None
        return top[2], entry

    def _resift(self, index: int) -> None:
        """Move the node at index to where its (changed) key belongs."""
        if index > 0 and self._heap[index] < self._heap[(index - 1) >> 1]:
            self._sift_up(index)
        else:
            self._sift_down(index)

    def _sift_up(self, index: int) -> None:
        heap, position = self._heap, self._position
        node = heap[index]
        while index > 0:
            parent_index = (index - 1) >> 1
            parent = heap[parent_index]
            if not node < parent:
                break
            heap[index] = parent
            position[parent[2]] = index
            index = parent_index
        heap[index] = node
        position[node[2]] = index

    def _sift_down(self, index: int) -> None:
        heap, position = self._heap, self._position
        size = len(heap)
        node = heap[index]
        while True:
            child_index = 2 * index + 1
            if child_index >= size:
                break
            right = child_index + 1
            if right < size and heap[right] < heap[child_index]:
                child_index = right
            child = heap[child_index]
            if not child < node:
                break
            heap[index] = child
            position[child[2]] = index
            index = child_index
        heap[index] = node
        position[node[2]] = index


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
