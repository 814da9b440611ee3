"""Word timestamps: CTC forced alignment, word times, the aligner on a tiny model, and the
commands and routes that expose them."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from aero.audio import SAMPLE_RATE
from aero.cli import app
from aero.decoding import GenerationOptions
from aero.engine import Engine
from aero.timestamps import (
    ALIGNER_FILE,
    ALPHABET,
    CtcAligner,
    forced_align,
    transcript_targets,
    word_times,
)
from conftest import make_tiny_model, make_tiny_processor, tone

runner = CliRunner()


def spelled(frames: list[str], floor: float = 1e-4) -> np.ndarray:
    """(T, 29) log-probabilities that spell `frames` ("" = blank) with probability ~1."""
    out = np.full((len(frames), len(ALPHABET) + 1), np.log(floor))
    for t, ch in enumerate(frames):
        out[t, ALPHABET.index(ch) + 1 if ch else 0] = 0.0
    return out


def test_forced_alignment_follows_the_posteriors():
    # "to" then a space then "too": o, o needs a blank between the two o's of "too".
    frames = ["", "t", "t", "o", "", " ", " ", "t", "o", "", "o", "o", ""]
    words, targets, spans = transcript_targets("To too!")
    assert words == ["To", "too!"] and spans == [(0, 2), (3, 6)]
    got = forced_align(spelled(frames), targets)
    assert got.tolist() == [[1, 2], [3, 3], [5, 6], [7, 7], [8, 8], [10, 11]]
    with pytest.raises(ValueError, match="too short"):
        forced_align(spelled(["t", "o"]), targets)


def test_words_without_letters_fill_the_gap_and_times_never_go_back():
    words, targets, spans = transcript_targets("at 42 % go")
    assert spans == [(0, 2), (2, 2), (2, 2), (3, 5)]  # a, t | space | g, o
    frames = np.array([[2, 2], [3, 3], [6, 6], [12, 12], [13, 14]])
    placed = word_times(words, spans, frames, np.ones(len(targets)), duration=1.0)
    assert [w.text for w in placed] == words
    times = [(round(w.start, 3), round(w.end, 3)) for w in placed]
    # "at" 0.08-0.16 s, "go" 0.48-0.60 s; "42" and "%" share the gap between them
    assert times == [(0.08, 0.16), (0.16, 0.32), (0.32, 0.48), (0.48, 0.6)]
    assert placed[1].probability == 0.0 and placed[0].probability == 1.0
    assert all(a.end <= b.start + 1e-9 for a, b in zip(placed, placed[1:]))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny checkpoint with a (random) word aligner beside its weights."""
    path = tmp_path_factory.mktemp("tiny-aligned")
    make_tiny_model().save_pretrained(path)
    make_tiny_processor().save_pretrained(path)
    torch.manual_seed(0)
    save_file(CtcAligner(32, hidden=16).state_dict(), str(path / ALIGNER_FILE))
    return path


def test_ten_minutes_align_in_one_pass(checkpoint):
    engine = Engine.load(str(checkpoint))
    samples = tone(600.0)
    text = " ".join(["hello", "world,", "this", "is", "aero", "2026."] * 100)  # 600 words
    words = engine.word_aligner().align(samples, text)
    assert [w.text for w in words] == text.split()
    starts = np.array([w.start for w in words])
    ends = np.array([w.end for w in words])
    assert (ends > starts).all() and (starts[1:] >= ends[:-1] - 1e-9).all()
    assert starts[0] >= 0 and ends[-1] <= 600.0 + 1e-6
    assert all(0.0 <= w.probability <= 1.0 for w in words)


def test_transcribe_with_word_timestamps_times_the_reply(checkpoint):
    engine = Engine.load(str(checkpoint))
    result = engine.transcribe([tone(4.0)], options=None, word_timestamps=True)[0]
    assert [w.text for w in result.words] == result.text.split()
    assert all(0 <= w.start < w.end <= 4.0 for w in result.words)
    no_aligner = Engine(engine.model, engine.processor, bundled_aligner=False)
    with pytest.raises(FileNotFoundError, match="no word aligner"):
        no_aligner.transcribe([tone(1.0)], word_timestamps=True)


def test_aero_align_command(checkpoint, tmp_path):
    audio = tmp_path / "a.wav"
    sf.write(audio, tone(3.0), SAMPLE_RATE)
    (tmp_path / "t.txt").write_text("hello there world\n")
    out = tmp_path / "a.json"
    args = [
        "align",
        str(audio),
        str(tmp_path / "t.txt"),
        "--model",
        str(checkpoint),
        "-o",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    words = json.loads(out.read_text())["words"]
    assert [w["word"] for w in words] == ["hello", "there", "world"]
    assert all(0 <= w["start"] < w["end"] <= 3.0 for w in words)
    srt = runner.invoke(
        app, ["align", str(audio), "hi you", "--model", str(checkpoint), "-f", "srt"]
    )
    assert srt.exit_code == 0 and "-->" in srt.stdout
    cue_words = [line for line in srt.stdout.splitlines() if line and "-->" not in line][1::2]
    assert " ".join(cue_words).split() == ["hi", "you"]
    bad = runner.invoke(
        app, ["align", str(tmp_path / "missing.wav"), "x", "--model", str(checkpoint)]
    )
    assert bad.exit_code == 2 and "does not exist" in bad.stderr


def test_a_word_without_letters_at_the_very_end_still_gets_time():
    words, targets, spans = transcript_targets("go 2026.")
    frames = np.array([[20, 20], [21, 24]])  # "go" runs to the end of a 1 s recording
    placed = word_times(words, spans, frames, np.ones(len(targets)), duration=1.0)
    assert [(round(w.start, 2), round(w.end, 2)) for w in placed] == [(0.8, 0.96), (0.96, 1.0)]
    assert all(w.end > w.start for w in placed)


def test_aero_mini_ships_an_aligner_with_its_lineage():
    from safetensors import safe_open

    from aero.models import AERO_MINI_BASE, aligner_file

    path = aligner_file(AERO_MINI_BASE)  # learned on the base's encoder (Whisper tiny.en's)
    assert path is not None and path.name == ALIGNER_FILE
    with safe_open(str(path), "pt") as f:
        lineage = f.metadata()
        shape = f.get_tensor("conv.weight").shape
    assert shape == (256, 384, 1)  # Whisper tiny.en's width, one frame at a time
    assert {"steps", "clips", "hours", "seed", "val_cer", "encoder"} <= set(lineage)
    assert lineage["encoder"] == "aero-mini" and float(lineage["val_cer"]) < 0.35


@pytest.mark.slow
def test_a_model_without_an_aligner_borrows_aero_minis(checkpoint, tmp_path):
    """Forced alignment needs the audio and the words: any model's transcript is timed by
    aero-mini's encoder and head (loaded once, on first use)."""
    engine = Engine(make_tiny_model(), make_tiny_processor())
    assert not engine.has_word_aligner
    samples = tone(3.0)
    words = engine.word_aligner().align(samples, "one two three")
    assert [w.text for w in words] == ["one", "two", "three"]
    assert all(0 <= w.start < w.end <= 3.0 for w in words)
    options = GenerationOptions(max_new_tokens=3)  # a short reply: its letters fit 3 s of frames
    result = engine.transcribe([samples], options=options, word_timestamps=True)[0]
    assert [w.text for w in result.words] == result.text.split() and not result.warnings
