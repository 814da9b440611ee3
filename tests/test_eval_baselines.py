"""faster-whisper baseline: optional import with a clear message, decoding options, parameter
counts."""

import sys
import types

import numpy as np
import pytest

from aero.evaluation.baselines import FasterWhisperTranscriber, _known_parameters


def test_parameter_counts_of_standard_checkpoints():
    assert _known_parameters("tiny.en") == 39_000_000
    assert _known_parameters("/models/faster-whisper-small.en/") == 244_000_000
    assert _known_parameters("large-v3") == 1_550_000_000
    assert _known_parameters("distil-large-v3") is None


def test_missing_faster_whisper_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install faster-whisper"):
        FasterWhisperTranscriber("tiny.en")


def test_greedy_english_without_timestamps(monkeypatch):
    calls = []

    class StubModel:  # stands in for faster_whisper.WhisperModel: no weights needed
        def __init__(self, model, device, compute_type):
            calls.append(("init", model, device, compute_type))

        def transcribe(self, audio, **options):
            calls.append(("transcribe", len(audio), options))
            segments = (
                types.SimpleNamespace(text=t) for t in [" Hello there.", " General Kenobi. "]
            )
            return segments, None

    monkeypatch.setitem(
        sys.modules, "faster_whisper", types.SimpleNamespace(WhisperModel=StubModel)
    )
    model = FasterWhisperTranscriber("base.en")
    assert model.name == "faster-whisper:base.en" and model.parameters == 74_000_000
    texts = model.transcribe(
        [np.zeros(1600, np.float32), np.zeros(3200, np.float32)], prompt="ignored"
    )
    assert texts == ["Hello there. General Kenobi."] * 2
    assert calls[0] == ("init", "base.en", "auto", "int8")
    options = calls[1][2]
    assert options == {
        "language": "en",
        "beam_size": 1,
        "temperature": 0.0,
        "without_timestamps": True,
    }
    with pytest.raises(NotImplementedError, match="multiple-choice"):
        model.answer([np.zeros(1600, np.float32)], ["q"])
