"""One eviction scope's entries in LFU order with exponential aging. Pure: no I/O,
time is passed in.

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

import dataclasses
import heapq
import math


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
