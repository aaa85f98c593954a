"""The fine-tuning loop that the verifier (semcache_server/verifier/training.py) and the
embedder (semcache_server/embedder_training.py) share: seeded shuffled batches over a
number of passes, AdamW with a linear warm-up then a linear decay to 0, gradients clipped
at 1, an optional time cap, and a progress bar. What a batch's loss is belongs to the caller."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

Item = TypeVar("Item")


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """What every fine-tune here is set by (the verifier's defaults; each trainer subclasses it)."""

    epochs: float = 2.0
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_share: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 64  # tokens of an input; queries are short
    seed: int = 0
    threads: int = 0  # torch threads; 0 = what torch picks
    max_minutes: float = 0.0  # stop (and keep what there is) after this long; 0 = no limit


def prepare_torch(settings: LoopSettings) -> None:
    """Before a fine-tune loads its base model: no hub (the weights ship in a package),
    torch's threads as set, and every generator seeded, so a run is reproducible."""
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    random.seed(settings.seed)
    np.random.seed(settings.seed)
    torch.manual_seed(settings.seed)


@dataclasses.dataclass(frozen=True)
class LoopResult:
    steps: int
    planned_steps: int
    seconds: float
    final_loss: float  # the mean of the last 100 batches' losses


def fine_tune(
    model: Any, items: Sequence[Item], loss_of: Callable[[list[Item], random.Random], Any], settings: LoopSettings,
    progress: bool = True, unit: str = "items", desc: str = "training",
) -> LoopResult:
    """Train `model` (a torch module, in train mode) on `items`: loss_of(batch, rng) is the
    batch's loss tensor; rng is the loop's own seeded generator (it shuffles each pass)."""
    import torch

    steps_per_epoch = math.ceil(len(items) / settings.batch_size)
    total_steps = max(1, int(steps_per_epoch * settings.epochs))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    warmup = max(1, int(total_steps * settings.warmup_share))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    rng = random.Random(settings.seed)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps * settings.batch_size, unit=unit, desc=desc, smoothing=0.05)
    started = time.monotonic()
    stop_at = started + settings.max_minutes * 60 if settings.max_minutes else math.inf
    step, losses = 0, []
    while step < total_steps and time.monotonic() < stop_at:
        order = list(range(len(items)))
        rng.shuffle(order)
        for start in range(0, len(order), settings.batch_size):
            if step >= total_steps or time.monotonic() >= stop_at:
                break
            batch = [items[i] for i in order[start:start + settings.batch_size]]
            loss = loss_of(batch, rng)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.detach().item())
            step += 1
            if bar is not None:
                bar.update(len(batch))
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-100:]):.3f}")
    if bar is not None:
        bar.close()
    final = float(np.mean(losses[-100:])) if losses else math.nan
    return LoopResult(step, total_steps, time.monotonic() - started, final)
