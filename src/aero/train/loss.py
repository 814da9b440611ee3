"""Fused linear cross-entropy: the LM head and the loss in one step, without full logits.

Notable choices:
- Only supervised positions get logits at all. In ASR most positions are audio or prompt
  tokens (-100), so selecting the supervised hidden states first removes most of the
  head's work; a full-vocabulary logits tensor of the whole batch is never built.
- The rest runs in chunks of `chunk` positions, each under activation checkpointing, so
  at most one chunk's logits (chunk x vocab floats) exist at a time, in forward and backward.
- On CUDA with `liger-kernel` installed, Liger's fused kernel replaces the chunk loop.
- Returns per-token losses (for token- or sample-level reduction) of the supervised tokens.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from aero.processing import IGNORE_INDEX


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = (hidden @ weight.T).float()
    return torch.nn.functional.cross_entropy(logits, targets, reduction="none")


def _liger_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return False
    return True


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk: int = 4096,
    use_liger: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., H) hidden, (V, H) head weight, (...) targets -> (losses of supervised tokens, their
    mask).

    `losses` is 1-D over the positions where `targets != -100`, in order.
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1).to(hidden.device)
    keep = targets != IGNORE_INDEX
    h, t = hidden[keep], targets[keep]
    if use_liger is None:
        use_liger = _liger_available(hidden.device)
    if use_liger and h.shape[0]:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        return LigerFusedLinearCrossEntropyLoss(reduction="none")(weight, h, t).float(), keep
    pieces = []
    for start in range(0, h.shape[0], chunk):
        args = (h[start : start + chunk], weight, t[start : start + chunk])
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            pieces.append(checkpoint(_chunk_loss, *args, use_reentrant=False))
        else:
            pieces.append(_chunk_loss(*args))
    losses = torch.cat(pieces) if pieces else h.new_zeros(0, dtype=torch.float32)
    return losses, keep


def reduce_losses(
    losses: torch.Tensor, sample_ids: torch.Tensor, mode: str
) -> tuple[torch.Tensor, float]:
    """Sum of the loss terms and their count, so micro-batches and ranks can be combined.

    mode "token": every supervised token weighs the same (sum of token losses, n tokens).
    mode "sample": every sample weighs the same (sum of per-sample mean losses, n samples).
    """
    if mode == "token":
        return losses.sum(), float(losses.numel())
    if mode != "sample":
        raise ValueError(f"loss_reduction must be 'token' or 'sample', not {mode!r}.")
    ids = sample_ids.to(losses.device)
    n = int(ids.max()) + 1 if ids.numel() else 0
    sums = torch.zeros(n, device=losses.device).index_add(0, ids, losses)
    counts = torch.zeros(n, device=losses.device).index_add(0, ids, torch.ones_like(losses))
    has = counts > 0
    return (sums[has] / counts[has]).sum(), float(has.sum())
