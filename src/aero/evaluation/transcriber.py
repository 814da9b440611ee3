"""`AeroTranscriber`: an aero model as the evaluation harness drives it (the runner's `Transcriber`
protocol), a thin adapter over `aero.engine.Engine`: batched by length, repetition guard on,
greedy unless the options say otherwise."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aero.decoding import DEFAULT_MAX_NEW_TOKENS, GenerationOptions
from aero.engine import Engine
from aero.modeling import AeroForConditionalGeneration
from aero.models import AERO_MINI, load
from aero.processing import AeroProcessor


@dataclass
class AeroTranscriber:
    """Batched greedy transcription and spoken-question answering with one model (via the
    engine)."""

    name: str
    model: AeroForConditionalGeneration
    processor: AeroProcessor
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    batch_size: int = 8
    fallback_temperatures: tuple[float, ...] = ()  # see GenerationOptions; () = greedy only
    num_beams: int = 1  # see GenerationOptions; 1 = greedy
    ctc_weight: float = GenerationOptions.ctc_weight  # joint CTC/LM transcripts ("ctc" models)

    def __post_init__(self):
        self.engine = Engine(self.model, self.processor, name=self.name, batch_size=self.batch_size)
        self.options = GenerationOptions(
            max_new_tokens=self.max_new_tokens,
            fallback_temperatures=self.fallback_temperatures,
            num_beams=self.num_beams,
            ctc_weight=self.ctc_weight,
        )

    def transcribe(self, audios: Sequence[np.ndarray], prompt: str | None = None) -> list[str]:
        """16 kHz clips (any length: long ones become several 30 s windows) -> transcripts."""
        prompts = [prompt or self.processor.transcribe_prompt] * len(audios)
        return self.answer(audios, prompts, transcription=True)

    def answer(
        self, audios: Sequence[np.ndarray], prompts: Sequence[str], transcription: bool = False
    ) -> list[str]:
        """One clip and one text prompt per sample -> the model's replies, batched by length.
        `transcription`: the replies are the clips' transcripts (the engine's budget for them, and
        joint CTC/LM decoding with a "ctc" connector)."""
        if len(audios) != len(prompts):
            raise ValueError(
                f"Got {len(audios)} audios but {len(prompts)} prompts; pass one prompt per audio."
            )
        prepared = [
            self.engine.prepare(
                self.processor.transcription_messages(a, p), self.options, transcription
            )
            for a, p in zip(audios, prompts)
        ]
        return [r.text for r in self.engine.generate_all(prepared, self.options)]


def load_transcriber(
    name: str | os.PathLike = AERO_MINI,
    cache_dir: str | os.PathLike | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> AeroTranscriber:
    model, processor = load(name, cache_dir)
    return AeroTranscriber(str(name), model, processor, max_new_tokens)
