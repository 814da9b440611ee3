"""Variable-length attention for packed rows without flash-attention (CPU, or GPUs without it).

transformers honours packed rows (position ids restarting at 0) under SDPA by building a
block-diagonal (T, T) mask and attending over the whole row: the work grows with the
square of the PACK length, not of each sample's length. With flash-attention the same row
runs varlen kernels over `cu_seq_lens`. This module gives SDPA that varlen behaviour: one
causal SDPA call per sample. It is registered under its own name through transformers'
`AttentionInterface` (no class is patched); without `cu_seq_lens_q` in the call (generation,
padded batches, the encoder) it is exactly transformers' SDPA.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "aero_packed_sdpa"


def packed_sdpa_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs
):
    """(B=1, H, T, D) q/k/v of a packed row -> (1, T, H, D), attending within each sample only."""
    segments = kwargs.pop("aero_segments", None)
    for name in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"):
        kwargs.pop(name, None)
    if segments is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    outputs = []
    for start, end in zip(segments[:-1], segments[1:]):
        out, _ = sdpa_attention_forward(
            module,
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            None,
            dropout=dropout,
            scaling=scaling,
            is_causal=True,
            **kwargs,
        )
        outputs.append(out)
    return torch.cat(outputs, dim=1), None


def register() -> str:
    AttentionInterface.register(NAME, packed_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME


def varlen_kwargs(seq_lens: list[int], device) -> dict:
    """Keyword arguments that make a packed row run per sample: `cu_seq_lens_*` / `max_length_*`
    for flash-attention varlen, `aero_segments` (host ints) for the SDPA loop above."""
    bounds = [0]
    for n in seq_lens:
        bounds.append(bounds[-1] + n)
    cu = torch.tensor(bounds, dtype=torch.int32, device=device)
    longest = max(seq_lens)
    return {
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": longest,
        "max_length_k": longest,
        "aero_segments": bounds,
    }
