"""Optional int8 dynamic quantization of the language model's Linear layers, for CPU.

Notable choices:
- `torch.ao.quantization.quantize_dynamic`: weights stored as int8 once, activations
  quantized per batch at run time; no calibration data, no retraining.
- Only the LM is quantized. The audio encoder's few small layers and the projector stay
  float32: the encoder runs once per window while the LM runs once per generated token,
  so the LM is where the time goes, and keeping the audio path exact keeps the features
  the projector was trained on.
- The embedding table stays float32 (its lookups are cheap); `lm_head` is quantized with
  the rest (SmolLM2 ties it to the embeddings, so this makes an int8 copy).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def quantize_dynamic_int8(model):
    """The model with its language model's nn.Linear layers replaced by int8 dynamic ones (in
    place)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao announces its move to torchao
        torch.ao.quantization.quantize_dynamic(
            model.language_model, {nn.Linear}, dtype=torch.qint8, inplace=True
        )
    return model
