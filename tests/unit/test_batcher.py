"""The batcher's plan: which waiting callers a model run takes, given their deadlines."""

from __future__ import annotations

from semcache_server.batcher import _MARGIN_TEXTS, _Request, plan_batch


def _requests(*deadlines: float | None) -> list[_Request]:
    return [_Request(f"text {i}", deadline) for i, deadline in enumerate(deadlines)]


def test_a_batch_holds_only_callers_the_model_can_answer_before_their_deadlines():
    # 10 ms a text, now = 100.0: a run of n texts is expected to end (margin included) at
    def end(n: int) -> float:
        return 100.0 + 0.01 * (n + _MARGIN_TEXTS)

    none, soon, ample, gone = None, end(2) + 0.001, 101.0, end(1) - 0.001
    pending = _requests(none, gone, ample, soon, ample, none, ample)
    batch, waiting, late = plan_batch(pending, count=5, now=100.0, seconds_per_text=0.01)
    # "gone" cannot be answered even alone (a run of one ends at end(1)). "soon" would be
    # late in a run of 3, so the batch ends before it; it and the rest wait, in order.
    assert [r.text for r in late] == ["text 1"]
    assert [r.text for r in batch] == ["text 0", "text 2"]
    assert [r.text for r in waiting] == ["text 3", "text 4", "text 5", "text 6"]
    # A caller that fits alone goes first in the next batch.
    batch, waiting, late = plan_batch(waiting, count=5, now=100.0, seconds_per_text=0.01)
    assert [r.text for r in batch] == ["text 3", "text 4"] and not late
    # Without deadlines, or before any run was timed, the batch is the front `count`.
    batch, waiting, late = plan_batch(_requests(*[None] * 6), count=4, now=0.0, seconds_per_text=0.01)
    assert (len(batch), len(waiting), late) == (4, 2, [])
    batch, waiting, late = plan_batch(_requests(100.001, 100.5, 99.0), count=4, now=100.0, seconds_per_text=0.0)
    assert [r.text for r in batch] == ["text 0", "text 1"] and [r.text for r in late] == ["text 2"]
