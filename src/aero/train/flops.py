"""FLOPs of a training step and MFU, counting attention per packed sample.

Matmul FLOPs: 2 per parameter per token in forward; backward costs 2 more for the input
gradients (whenever anything upstream trains) and 2 more for the weight gradients (only for
trainable weights). Attention scores and values add 4 * layers * width * s^2 per sequence in
forward. The reference counted a packed row of k samples as one sequence of sum(s), which
overstates attention by (sum s)^2 / sum(s^2); here each sample counts on its own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FlopModel:
    lm_params: int  # matmul weights of the LM layers (embedding lookups and the head excluded)
    head_params: int  # the LM head: only supervised positions need logits (see train/loss.py)
    head_trainable: bool
    lm_trainable_params: int  # of which trainable (all for full fine-tuning, the adapters for LoRA)
    lm_layers: int
    lm_width: int  # attention width (heads x head dim)
    enc_params: int  # matmul weights of the encoder layers (+ convolutions) and the projector
    enc_trainable_params: int
    enc_layers: int
    enc_width: int
    lm_grads: bool  # gradients flow through the LM (anything trains)
    enc_grads: bool  # gradients flow through the encoder (the encoder trains)

    def step_flops(
        self, seq_lens: list[int], window_positions: list[int], supervised: int
    ) -> float:
        def part(params, trainable, layers, width, lens, grads):
            matmul = (2 * params + (2 * params if grads else 0) + 2 * trainable) * sum(lens)
            attention = (4 + (8 if grads else 0)) * layers * width * sum(s * s for s in lens)
            return matmul + attention

        lm = part(
            self.lm_params,
            self.lm_trainable_params,
            self.lm_layers,
            self.lm_width,
            seq_lens,
            self.lm_grads,
        )
        enc = part(
            self.enc_params,
            self.enc_trainable_params,
            self.enc_layers,
            self.enc_width,
            window_positions,
            self.enc_grads,
        )
        head = (
            (2 + (2 if self.lm_grads else 0) + (2 if self.head_trainable else 0))
            * self.head_params
            * supervised
        )
        return float(lm + enc + head)


def _matmul_params(module, trainable_only: bool = False) -> int:
    import torch

    total = 0
    for m in module.modules():
        for p in getattr(m, "_parameters", {}).values():
            if p is None or p.ndim < 2 or isinstance(m, torch.nn.Embedding):
                continue
            if not trainable_only or p.requires_grad:
                total += p.numel()
    return total


def flop_model(model) -> FlopModel:
    """Counts from a (possibly LoRA-wrapped) AeroForConditionalGeneration."""
    lm, tower, projector = model.language_model, model.audio_tower, model.audio_modal_projector
    text, audio = model.config.text_config, model.config.audio_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    enc_trainable = _matmul_params(tower, True)
    head = lm.get_output_embeddings().weight
    return FlopModel(
        lm_params=_matmul_params(lm) - head.numel(),
        head_params=head.numel(),
        head_trainable=head.requires_grad,
        lm_trainable_params=_matmul_params(lm, True) - (head.numel() if head.requires_grad else 0),
        lm_layers=text.num_hidden_layers,
        lm_width=text.num_attention_heads * head_dim,
        enc_params=_matmul_params(tower) + _matmul_params(projector),
        enc_trainable_params=enc_trainable + _matmul_params(projector, True),
        enc_layers=audio.encoder_layers,
        enc_width=audio.d_model,
        lm_grads=any(p.requires_grad for p in model.parameters()),
        enc_grads=enc_trainable > 0,
    )


def reference_overcount(seq_lens: list[int]) -> float:
    """How much a whole-row attention count overstates per-sample attention."""
    return sum(seq_lens) ** 2 / max(1, sum(s * s for s in seq_lens))
