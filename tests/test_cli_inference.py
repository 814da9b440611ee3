"""`aero transcribe / chat / info` on a tiny random checkpoint saved to a temporary directory."""

import json
import re

import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from aero.audio import SAMPLE_RATE
from aero.cli import app
from conftest import make_looping_model, make_tiny_model, make_tiny_processor, tone

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)  # the commands below set 1 thread with --threads 1


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model().save_pretrained(directory)
    make_tiny_processor().save_pretrained(directory)
    return str(directory)


@pytest.fixture
def audio_dir(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    sf.write(folder / "short.wav", tone(2.0), SAMPLE_RATE)
    sf.write(folder / "sub" / "long.flac", tone(65.0, 300, seed=1), SAMPLE_RATE)
    (folder / "notes.txt").write_text("not audio, and not picked up from a directory")
    return folder


def transcribe(model_dir, *args):
    return runner.invoke(
        app, ["transcribe", *args, "--model", model_dir, "--threads", "1", "--max-new-tokens", "8"]
    )


def times(text: str, sep: str) -> list[float]:
    pattern = rf"(\d\d):(\d\d):(\d\d){re.escape(sep)}(\d\d\d)"
    return [
        int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000
        for h, m, s, ms in re.findall(pattern, text)
    ]


@pytest.mark.parametrize("fmt", ["txt", "json", "srt", "vtt"])
def test_transcribe_every_format(model_dir, audio_dir, tmp_path, fmt):
    out = tmp_path / "out"
    result = transcribe(model_dir, str(audio_dir), "--format", fmt, "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [f"long.{fmt}", f"short.{fmt}"]
    long = (out / f"long.{fmt}").read_text()
    if fmt == "txt":
        assert long.strip() and long.endswith("\n")
    elif fmt == "json":
        data = json.loads(long)
        assert data["duration"] == pytest.approx(65.0) and data["text"]
        assert data["audios"][0]["windows"] == [[0, 30], [30, 60], [60, 65.0]]
        assert data["finish_reason"] in ("stop", "length", "repetition")
    elif fmt == "srt":
        blocks = long.strip().split("\n\n")
        assert [b.splitlines()[0] for b in blocks] == [str(i) for i in range(1, len(blocks) + 1)]
        t = times(long, ",")
        assert len(t) == 2 * len(blocks) and t == sorted(t) and t[-1] == pytest.approx(65.0)
        assert all(" --> " in b.splitlines()[1] for b in blocks)
    else:
        assert long.startswith("WEBVTT\n\n")
        t = times(long, ".")
        assert t == sorted(t) and t[0] == 0 and t[-1] == pytest.approx(65.0) and len(t) == 6


def test_a_failing_file_does_not_stop_the_rest(model_dir, audio_dir, tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....garbage")
    out = tmp_path / "out"
    result = transcribe(
        model_dir,
        str(bad),
        str(audio_dir / "short.wav"),
        str(tmp_path / "missing.mp3"),
        "--output-dir",
        str(out),
    )
    assert result.exit_code == 1
    assert (out / "short.txt").read_text().strip()
    assert not (out / "broken.txt").exists() and not (out / "missing.txt").exists()
    assert "broken.wav" in result.output and "could not be decoded" in result.output
    assert "missing.mp3" in result.output and "does not exist" in result.output
    assert "1 transcribed, 2 failed" in result.output


def test_transcribe_refuses_unknown_format_and_model(model_dir, audio_dir, tmp_path):
    assert transcribe(model_dir, str(audio_dir), "--format", "doc").exit_code == 2
    result = runner.invoke(
        app, ["transcribe", str(audio_dir), "--model", str(tmp_path / "nothing-here")]
    )
    assert result.exit_code == 2 and "cannot load model" in result.output


def test_transcribe_help_states_timestamp_precision():
    result = runner.invoke(app, ["transcribe", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.replace("\u2502", " ").split())  # rich wraps help inside a box
    assert "cues follow the speech" in text and "timing precision 30 s" in text


def test_chat_ask_and_interactive(model_dir, audio_dir):
    args = [
        "chat",
        str(audio_dir / "short.wav"),
        "--model",
        model_dir,
        "--threads",
        "1",
        "--max-new-tokens",
        "6",
    ]
    once = runner.invoke(app, [*args, "--ask", "What is this?"])
    assert once.exit_code == 0, once.output
    assert once.output.strip()
    session = runner.invoke(app, args, input="What is this?\nAnd then?\n\n")
    assert session.exit_code == 0, session.output
    assert session.output.count("you> ") == 3  # two questions, then an empty line ends it
    missing = runner.invoke(app, ["chat", "nope.wav", "--ask", "x", "--model", model_dir])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_info(model_dir):
    result = runner.invoke(app, ["info", model_dir], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for key in (
        "language model",
        "LM context",
        "32768 tokens",
        "audio tokens",
        "25.00 per second",
        "longest audio",
    ):
        assert key in result.output


def test_transcribe_fallback_redecodes_a_looping_recording(tmp_path):
    model = make_looping_model()
    looping = tmp_path / "looping-model"
    model.save_pretrained(looping)
    make_tiny_processor().save_pretrained(looping)
    sf.write(tmp_path / "clip.wav", tone(2.0), SAMPLE_RATE)
    base = [
        "transcribe",
        str(tmp_path / "clip.wav"),
        "--model",
        str(looping),
        "--threads",
        "1",
        "--max-new-tokens",
        "40",
        "-o",
        str(tmp_path / "out"),
    ]
    greedy = runner.invoke(app, base)
    assert greedy.exit_code == 0 and "(stopped a repetition loop)" in greedy.output
    cut = (tmp_path / "out" / "clip.txt").read_text()
    fallback = runner.invoke(app, [*base, "--fallback"])
    assert fallback.exit_code == 0, fallback.output
    assert (
        "(temperature fallback: 0.2)" in fallback.output
        and "repetition loop" not in fallback.output
    )
    assert len((tmp_path / "out" / "clip.txt").read_text()) > len(cut)
    beams = runner.invoke(app, [*base, "--beam-size", "2"])
    assert beams.exit_code == 0, beams.output
    bad = runner.invoke(app, [*base, "--beam-size", "0"])
    assert bad.exit_code == 2 and "num_beams" in bad.output
