"""Aero-1-Audio: a compact audio-language model.

    import aero
    model, processor = aero.load("aero-mini")      # or a checkpoint directory, or a hub id
    engine = aero.Engine.load("aero-mini")          # batched transcription and chat
    print(engine.transcribe(["talk.flac"])[0].text)

The names below are imported on first use, so `import aero` stays cheap (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load": "aero.models",
    "Engine": "aero.engine",
    "GenerationOptions": "aero.decoding",
    "FALLBACK_TEMPERATURES": "aero.decoding",
    "Result": "aero.engine",
    "AeroForConditionalGeneration": "aero.modeling",
    "AeroConfig": "aero.modeling",
    "AeroProcessor": "aero.processing",
    "load_audio": "aero.audio",
    "AudioError": "aero.audio",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'aero' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
