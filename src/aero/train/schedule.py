"""The learning-rate schedule every training objective uses: linear warm-up, then cosine decay."""

from __future__ import annotations

import math
import time

import torch


def cosine_schedule(
    optimizer, warmup: int, total: int, min_ratio: float, minutes: float | None = None
):
    """Warm up over `warmup` steps, then decay to `min_ratio` of the peak at step `total` (held
    after). With `minutes` the decay spans that much wall-clock time from now instead of steps:
    for a run whose speed is not known ahead (a lent GPU), ended by its `max_minutes`."""
    start = time.perf_counter()

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if minutes:
            progress = (time.perf_counter() - start) / (60 * minutes)
        else:
            progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
