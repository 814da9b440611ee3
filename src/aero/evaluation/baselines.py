"""Peer baselines scored by the same harness: faster-whisper (CTranslate2 Whisper).

Notable choices:
- `faster_whisper` is an optional dependency, imported when a baseline is built, with a
  one-line install hint if it is missing.
- Decoding is greedy (beam_size=1, temperature 0 only) in English without timestamps, like
  aero's own harness, so the comparison is decoder-for-decoder; compute_type defaults to int8
  for CPU.
- The ASR `prompt` is ignored: Whisper does not follow instructions, and feeding the text as
  `initial_prompt` would bias its decoding rather than instruct it.
- Parameter counts of the standard checkpoints come from the openai/whisper README
  (rounded), so the report's parameters-vs-WER scatter can place them.
"""

from __future__ import annotations

import os

import numpy as np

# Parameters of openai/whisper checkpoints (openai/whisper README); distil/turbo variants unknown.
WHISPER_PARAMETERS = {
    "tiny": 39_000_000,
    "base": 74_000_000,
    "small": 244_000_000,
    "medium": 769_000_000,
    "large": 1_550_000_000,
}


def _known_parameters(model: str) -> int | None:
    name = (
        os.path.basename(model.rstrip("/"))
        .lower()
        .removeprefix("whisper-")
        .removeprefix("faster-whisper-")
    )
    size = name.split(".")[0].split("-")[0]  # "small.en" -> small, "large-v3" -> large
    return WHISPER_PARAMETERS.get(size)


class FasterWhisperTranscriber:
    """`Transcriber` over faster-whisper; `model` is a CTranslate2 model directory or a size
    name."""

    def __init__(self, model: str, device: str = "auto", compute_type: str = "int8"):
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise ImportError(
                "The faster-whisper baseline needs the optional package `faster-whisper`: "
                "pip install faster-whisper"
            ) from None
        self.name = f"faster-whisper:{model}"
        self.parameters = _known_parameters(model)
        self.device = device
        self._model = WhisperModel(model, device=device, compute_type=compute_type)

    def transcribe(self, audios: list[np.ndarray], prompt: str | None = None) -> list[str]:
        texts = []
        for audio in audios:
            segments, _ = self._model.transcribe(
                audio,
                language="en",
                beam_size=1,
                temperature=0.0,
                without_timestamps=True,
            )
            # segments is a lazy generator: decoding happens while it is consumed.
            texts.append(" ".join(segment.text.strip() for segment in segments).strip())
        return texts

    def answer(self, audios: list[np.ndarray], prompts: list[str]) -> list[str]:
        raise NotImplementedError(
            "Whisper cannot answer multiple-choice questions; use it for ASR tasks only."
        )
