"""Rendering one planned sample into a 16 kHz mono FLAC file (runs in worker processes).

Kept free of heavy imports (no torch/transformers) so worker processes start fast.
"""

from __future__ import annotations

import json
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


def finished(job: Job, root: str) -> dict | None:
    """The result of a job whose audio an earlier run already wrote, or None.

    A sidecar `<id>.json` holds it; without one (runs before sidecars existed) a job that
    uses all its speeches is still complete when its audio file is readable.
    """
    path = Path(root) / job.audio
    sidecar = path.with_suffix(".json")
    if sidecar.is_file() and path.is_file():
        return {"id": job.id, **json.loads(sidecar.read_text())}
    if path.is_file() and not job.min_seconds:
        import soundfile as sf

        try:
            info = sf.info(str(path))
        except Exception:
            return None
        return {
            "id": job.id,
            "duration": round(info.frames / info.samplerate, 3),
            "used": len(job.speeches),
        }
    return None


def render_job(job: Job, root: str) -> dict:
    """Write the job's audio under root; returns its duration and how many speeches it used.

    A failure (a synthesizer crash, say) comes back as {"id", "error"} so one bad clip never
    stops a run; an audio file written earlier with its result is reused (runs resume).
    """
    done = finished(job, root)
    if done is not None:
        return done
    try:
        return _render(job, root)
    except Exception as err:  # reported per clip by the caller
        return {"id": job.id, "error": f"{type(err).__name__}: {err}"}


def _render(job: Job, root: str) -> dict:
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
    result = {"duration": round(len(audio) / SAMPLE_RATE, 3), "used": used}
    path.with_suffix(".json").write_text(
        json.dumps(result)
    )  # written last: marks the clip complete
    return {"id": job.id, **result}
