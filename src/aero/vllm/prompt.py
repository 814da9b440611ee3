"""What a recording becomes in a vLLM prompt: 30 s windows, their placeholder ids, their log-mel.

This module runs in both environments: aero's own (transformers >= 5.24) and the vLLM one
(vLLM pins an older transformers, under which `aero.modeling` and `aero.processing` do not
import). It therefore imports from aero only `aero.audio`, where the window cut
(`split_windows`) and THE frames -> tokens arithmetic (`window_tokens`) live, and
`aero.chat_format` (placeholder, prompts, chat template). The log-mel padding restates
AeroProcessor's; `tests/test_vllm_prompt.py` holds ids and features equal to aero's own in
aero's environment.

Notable choices:
- One audio item of a vLLM request is one whole recording. Its `<|AUDIO|>` placeholder becomes
  every window's tokens with the chat format's "\\n" between windows, exactly the ids
  AeroProcessor gives the same recording as several `<|AUDIO|>\\n` parts.
- A last window too short for one token (<= 320 samples) is left out. AeroProcessor drops its
  placeholder but keeps the "\\n" after it, which Qwen2's tokenizer merges with the next one
  into one "\\n\\n" id; here the recording is one placeholder, so the prompt has one "\\n"
  there, as for a recording of exactly 30 s (a documented, tested one-id difference, only for
  recordings between k x 30 s and k x 30 s + 20 ms long).
- Log-mel of each window is computed as AeroProcessor.audio_features does: zero-padded only as
  far as the encoder reads (ENCODER_LOOKAHEAD_FRAMES past the real frames plus one FFT window).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch

from aero.audio import (
    ENCODER_LOOKAHEAD_FRAMES,
    HOP_LENGTH,
    MIN_TOKEN_SAMPLES,
    N_FFT,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    mel_frames,
    split_windows,
    window_tokens,
)
from aero.chat_format import CHAT_TEMPLATE

WINDOW_SEPARATOR = "\n"  # the chat format writes `<|AUDIO|>\n` per window


def chat_template(system_prompt: str | None) -> str:
    """The jinja chat format with this system prompt (AeroProcessor.default_chat_template)."""
    return "{% set default_system = " + json.dumps(system_prompt or "") + " %}" + CHAT_TEMPLATE


def recording_windows(samples: np.ndarray, stack: int = 1) -> tuple[list[np.ndarray], list[int]]:
    """16 kHz samples -> the windows that give tokens and their token counts.

    A last window of <= 320 samples gives no token and is left out; a recording too short for
    any token is a ValueError naming its length.
    """
    windows = split_windows(np.asarray(samples, dtype=np.float32))
    tokens = [window_tokens(len(w), stack) for w in windows]
    if not any(tokens):
        raise ValueError(
            f"The audio is {len(samples)} samples ({1000 * len(samples) / SAMPLE_RATE:.0f} ms) "
            f"at 16 kHz: too short for one audio token; send at least {MIN_TOKEN_SAMPLES} samples."
        )
    kept = [(w, n) for w, n in zip(windows, tokens) if n]
    return [w for w, _ in kept], [n for _, n in kept]


def placeholder_ids(tokens: Sequence[int], audio_token_id: int, separator: Sequence[int]) -> list:
    """One recording's ids: each window's `tokens[i]` audio ids, `separator` (the ids of "\\n")
    between windows; the "\\n" after the last window stays the prompt's own."""
    ids: list[int] = []
    for i, n in enumerate(tokens):
        if i:
            ids += list(separator)
        ids += [audio_token_id] * n
    return ids


def window_features(feature_extractor, windows: Sequence[np.ndarray]) -> torch.Tensor:
    """Windows of <= 30 s -> (W, M, T) log-mel, T = the longest window's real frames +
    ENCODER_LOOKAHEAD_FRAMES (at most 3000): the frames of the 30 s zero-padded input the
    encoder reads."""
    frames = [mel_frames(len(w)) for w in windows]
    T = min(max(frames) + ENCODER_LOOKAHEAD_FRAMES, N_FRAMES)
    out = feature_extractor(
        [np.asarray(w, dtype=np.float32) for w in windows],
        sampling_rate=SAMPLE_RATE,
        padding="max_length",
        max_length=min(T * HOP_LENGTH + N_FFT, N_SAMPLES),
        return_tensors="pt",
    )
    return out["input_features"][:, :, :T]
