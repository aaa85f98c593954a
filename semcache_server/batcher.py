"""The request batcher: concurrent single-text embedding requests share model calls,
and a request whose caller's deadline has passed never reaches the model."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from semcache_server.embedder import Embedder, check_deadline
from semcache_server.errors import DeadlineExceededError

# Weight of the newest run in BatchingEmbedder's moving average of seconds per text.
_SECONDS_PER_TEXT_WEIGHT = 0.2
# plan_batch expects a run to end this many texts' time later than its own texts take:
# room for the search, the reply and gRPC after the model, which a heavy load slows too.
_MARGIN_TEXTS = 3


class _Request:
    __slots__ = ("deadline", "done", "error", "lead", "split", "text", "vector", "wake")

    def __init__(self, text: str, deadline: float | None) -> None:
        self.text = text
        self.deadline = deadline  # time.monotonic(); None = the caller waits as long as it takes
        self.vector: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False
        self.lead = False  # this caller holds a run slot and runs the next batch
        self.split = False  # ... given to it to share a queue that is already long
        self.wake = threading.Event()  # set when done or made leader


def plan_batch(
    pending: list[_Request], count: int, now: float, seconds_per_text: float
) -> tuple[list[_Request], list[_Request], list[_Request]]:
    """Split the queue into (batch, still waiting, late).

    The batch takes up to `count` requests from the front, in order; a run of n texts
    is expected to take n * seconds_per_text from `now`, and answers all of them at its
    end. Late: requests whose deadline comes before even a run of their text alone
    could end: the caller will have given up, so the model does not run for them. A
    request that a batch this long would make late (it, or one already in) ends the
    batch; it goes first in a later one. Requests without a deadline always fit.
    """
    batch: list[_Request] = []
    waiting: list[_Request] = []
    late: list[_Request] = []
    earliest = float("inf")  # the earliest deadline in the batch
    closed = False
    for r in pending:
        deadline = float("inf") if r.deadline is None else r.deadline
        if deadline < now + seconds_per_text * (1 + _MARGIN_TEXTS) or deadline <= now:
            late.append(r)
        elif closed or len(batch) >= count:
            waiting.append(r)
        elif min(earliest, deadline) < now + seconds_per_text * (len(batch) + 1 + _MARGIN_TEXTS):
            closed = True
            waiting.append(r)
        else:
            batch.append(r)
            earliest = min(earliest, deadline)
    return batch, waiting, late


class BatchingEmbedder:
    """Embeds concurrent single-text requests together, in as few model calls as the
    cores allow.

    Leader/follower, no dispatcher thread: the model takes `inner.parallel_calls`
    calls at once (one per core), and a caller that gets a free run slot (a leader)
    runs the model for waiting texts, its own first; callers arriving meanwhile queue
    up. A leader takes an equal share of the queue per free slot (at most max_batch)
    and makes the next waiting caller a leader for the rest, so both cores work on
    half a burst rather than one core on all of it. A finishing leader wakes the
    callers it served and hands its slot to the oldest caller still waiting, so each
    wake-up is one Event, not a stampede on a shared condition. A lone caller (no
    other run going) uses every core for its call: a single client pays no thread
    hand-off and gets the lowest latency. When the last batch had company, a leader
    first waits up to max_wait_seconds for more to arrive. Callers may give a deadline:
    one the model could no longer meet when a leader forms a batch is answered
    DeadlineExceededError and its text is not run, and a batch is cut short where its
    length would make a member late (plan_batch). Under overload the model works only
    for callers who will still be waiting for its answer.
    """

    def __init__(
        self,
        inner: Embedder,
        *,
        max_batch: int = 32,
        max_wait_seconds: float = 0.001,
        observe_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.dimension = inner.dimension
        self.backend = inner.backend
        self.parallel_calls = inner.parallel_calls
        self.max_batch = max_batch
        self.max_wait_seconds = max_wait_seconds
        self._observe_batch = observe_batch
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # a leader waiting for company waits here
        self._pending: list[_Request] = []
        self._runs = 0
        self._forming = False  # a leader is gathering its batch
        self._last_batch = 1
        # Seconds a model run takes per text, a moving average over runs (0 until the first).
        self._seconds_per_text = 0.0

    def embed(self, texts: Sequence[str], deadline: float | None = None) -> np.ndarray:
        if len(texts) != 1:
            return self.inner.embed(texts, deadline)
        check_deadline(deadline)
        request = _Request(texts[0], deadline)
        with self._lock:
            self._pending.append(request)
            if self._runs < self.parallel_calls and not self._forming:
                self._runs += 1
                self._forming = True
                request.lead = True
            elif self._forming:
                self._arrived.notify()
        while True:
            if request.lead:  # first, even when done: a leader must serve the queue or free its slot
                self._lead(request)
            elif request.done:
                break
            else:
                request.wake.wait()
                request.wake.clear()
        if request.error is not None:
            raise request.error
        assert request.vector is not None
        return request.vector[None, :]

    def _lead(self, leader: _Request) -> None:
        """Form one batch from the front of the queue (the leader's own text is in it,
        unless it already went to an earlier leader), run it, pass the run slot on."""
        with self._lock:
            self._forming = True
            if (
                not leader.split and self._last_batch > 1 and self.max_wait_seconds > 0
                and len(self._pending) < self.max_batch
            ):
                deadline = time.perf_counter() + self.max_wait_seconds
                while len(self._pending) < self.max_batch and (left := deadline - time.perf_counter()) > 0:
                    self._arrived.wait(left)
            # Share the queue with the idle run slots: each gets an equal part, less any
            # caller the model could not answer before its deadline.
            slots = 1 + self.parallel_calls - self._runs
            batch, self._pending, late = plan_batch(
                self._pending, min(-(-len(self._pending) // slots), self.max_batch), time.monotonic(),
                self._seconds_per_text,
            )
            self._answer_late(late)
            if self._runs < self.parallel_calls and self._promote(split=True):
                self._runs += 1
            self._forming = False
            alone = self._runs == 1
        per_text = 0.0
        try:
            if batch:
                texts = [r.text for r in batch]
                started = time.monotonic()
                vectors = self.inner.embed(texts) if alone else self.inner.embed_on_one_core(texts)
                per_text = (time.monotonic() - started) / len(batch)
                for r, vector in zip(batch, vectors, strict=True):
                    r.vector = vector
                if self._observe_batch is not None:
                    self._observe_batch(len(batch))
        except BaseException as e:  # every waiter of this batch sees the failure
            for r in batch:
                r.error = e
        finally:
            with self._lock:
                leader.lead = leader.split = False
                if batch:
                    self._last_batch = len(batch)
                if per_text:
                    self._seconds_per_text += _SECONDS_PER_TEXT_WEIGHT * (per_text - self._seconds_per_text)
                for r in batch:
                    r.done = True
                    r.wake.set()
                if not self._promote(split=False):  # the slot passes on, or is free
                    self._runs -= 1

    @staticmethod
    def _answer_late(late: list[_Request]) -> None:
        """Answer DeadlineExceededError to callers the model could not serve in time. The
        caller holds self._lock."""
        for r in late:  # a caller made leader still leads first (embed()), then sees its error
            r.error = DeadlineExceededError(
                "the request's deadline passed, or would have, while it waited for the embedding model"
            )
            r.done = True
            r.wake.set()

    def _promote(self, *, split: bool) -> bool:
        """Make the oldest waiting caller that is not a leader yet a leader (False: none
        waits). The caller holds self._lock."""
        for successor in self._pending:
            if not successor.lead:
                successor.lead = True
                successor.split = split
                successor.wake.set()
                return True
        return False

    def embed_on_one_core(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed_on_one_core(texts)

    def close(self) -> None:
        """Nothing to stop: the callers' own threads run the model."""
