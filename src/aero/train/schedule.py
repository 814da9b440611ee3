"""The learning-rate schedule every training objective uses: linear warm-up, then cosine decay."""

from __future__ import annotations

import math

import torch


def cosine_schedule(optimizer, warmup: int, total: int, min_ratio: float):
    """Warm up over `warmup` steps, then decay to `min_ratio` of the peak at step `total` (held
    after)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
