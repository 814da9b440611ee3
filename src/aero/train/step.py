"""The training forward: audio merge, LM hidden states, fused loss, for packed or padded batches.

`TrainingModule` wraps the model so that one `forward` does everything: under FSDP2 the
root module's hooks then gather every parameter the step touches (the projector, the
embeddings and the LM head live in the root group).
"""

from __future__ import annotations

import torch
from torch import nn

from aero.train.loss import fused_linear_cross_entropy, reduce_losses
from aero.train.packed_attention import varlen_kwargs


class TrainingModule(nn.Module):
    def __init__(self, model, loss_chunk: int = 4096, loss_reduction: str = "token"):
        super().__init__()
        self.model = model
        self.loss_chunk = loss_chunk
        self.loss_reduction = loss_reduction

    def forward(self, batch: dict) -> tuple[torch.Tensor, float]:
        """-> (sum of loss terms, number of terms): divide by the step's total terms."""
        aero = self.model
        lm = aero.language_model
        device = aero.get_input_embeddings().weight.device
        input_ids = batch["input_ids"].to(device)
        embeds = aero.get_input_embeddings()(input_ids)
        if "audio_features" in batch:  # a frozen "ctc" connector's emissions, made by the collator
            embeds = aero.merge_audio(input_ids, embeds, batch["audio_features"].to(device))
        elif "audio_values" in batch:
            values, mask = (
                batch["audio_values"].to(device),
                batch["audio_attention_mask"].to(device),
            )
            if batch.get("pad_audio_to_30s"):
                # The reference's cost, for comparisons: every window runs all 3000 frames.
                encoded, tokens = aero.encode_audio(values, mask)
                features = aero.project_audio([e[:n] for e, n in zip(encoded, tokens.tolist())])
            else:
                features = aero.get_audio_features(values, mask)  # real lengths, grouped
            embeds = aero.merge_audio(input_ids, embeds, features)
        mask = batch.get("attention_mask")
        # A packed row (no mask) attends per sample: flash-attention varlen or the per-sample SDPA
        # loop read these; plain SDPA/eager fall back to a block-diagonal mask from position_ids.
        varlen = varlen_kwargs(batch["seq_lens"], device) if mask is None else {}
        hidden = lm.get_decoder()(
            inputs_embeds=embeds,
            position_ids=batch["position_ids"].to(device),
            attention_mask=mask.to(device) if mask is not None else None,
            use_cache=False,  # with a cache, packed position ids are not read as sample boundaries
            **varlen,
        ).last_hidden_state
        losses, keep = fused_linear_cross_entropy(
            hidden, lm.get_output_embeddings().weight, batch["targets"], chunk=self.loss_chunk
        )
        sample_ids = batch["sample_ids"].reshape(-1).to(keep.device)[keep]
        return reduce_losses(losses, sample_ids, self.loss_reduction)
