"""Rendering one planned sample into a 16 kHz mono FLAC file (runs in worker processes).

Kept free of heavy imports (no torch/transformers) so worker processes start fast.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aero.audio import SAMPLE_RATE
from aero.data.synth import augment
from aero.data.synth.voices import Speech, render


@dataclass
class Job:
    id: str
    audio: str  # path relative to the output root
    task: str
    prompt: str
    speeches: list[Speech]  # spoken one after another, separated by `pauses`
    pauses: list[float]  # seconds of silence after each speech but the last
    effects: list[dict]
    texts: list[str]  # transcript of each speech
    answer: str | None  # None: filled later (instruct: the LLM; long: the spoken transcript)
    min_seconds: float = 0.0  # long: stop adding speeches once the audio is this long
    meta: dict = field(default_factory=dict)


def render_job(job: Job, root: str) -> dict:
    """Write the job's audio under root; returns its duration and how many speeches it used."""
    pieces: list[np.ndarray] = []
    seconds, used = 0.0, 0
    with tempfile.TemporaryDirectory(prefix="aero-synth-") as tmp:
        for i, speech in enumerate(job.speeches):
            if i:
                pause = np.zeros(int(job.pauses[i - 1] * SAMPLE_RATE), np.float32)
                pieces.append(pause)
                seconds += len(pause) / SAMPLE_RATE
            audio = render(speech, tmp)
            pieces.append(audio)
            seconds += len(audio) / SAMPLE_RATE
            used = i + 1
            if job.min_seconds and seconds >= job.min_seconds:
                break
        audio = augment.apply(np.concatenate(pieces), job.effects, tmp)
    import soundfile as sf

    path = Path(root) / job.audio
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return {"id": job.id, "duration": round(len(audio) / SAMPLE_RATE, 3), "used": used}
