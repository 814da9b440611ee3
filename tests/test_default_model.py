"""The default model policy: AERO_MODEL, else the published checkpoint from the local Hugging Face
cache or the Hub, else aero-mini, with one line on stderr saying which and why."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import soundfile as sf
from typer.testing import CliRunner

from aero.audio import SAMPLE_RATE
from aero.cli import app
from aero.models import AERO_MINI, PUBLISHED_MODEL, choose_model
from conftest import tone, write_manifest

runner = CliRunner()


def closed_port() -> int:
    """A loopback port nothing listens on: connections to it are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_env(cache) -> dict:
    """A fresh process's environment: an empty hub cache, the Hub at a refused loopback port."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "AERO_MODEL")}
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    return env


def put_in_hub_cache(checkpoint, cache, repo_id: str = PUBLISHED_MODEL):
    """Lay `checkpoint` out as huggingface_hub caches a download of `repo_id`."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(checkpoint, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def test_empty_cache_and_unreachable_hub_choose_aero_mini(tmp_path):
    code = (
        "from aero.models import choose_model; c = choose_model(None); "
        "print(c.source); print(c.notice)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=offline_env(tmp_path / "cache"),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    assert out[0] == AERO_MINI
    assert "aero: running aero-mini (a small demonstration model" in out[1]
    assert "not in the local Hugging Face cache" in out[1] and "Hub did not answer" in out[1]


def test_a_named_model_and_aero_model_override_the_default(published, monkeypatch):
    assert choose_model("x/y").source == "x/y"
    monkeypatch.setenv("AERO_MODEL", str(published))
    choice = choose_model(None)
    assert choice.source == str(published) and "set by AERO_MODEL" in choice.notice


def test_published_model_in_the_local_cache_runs_by_default(published, tmp_path, monkeypatch):
    snapshot = put_in_hub_cache(published, tmp_path / "cache")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    choice = choose_model(None)
    assert (choice.name, choice.source) == (PUBLISHED_MODEL, str(snapshot))
    sf.write(tmp_path / "clip.wav", tone(2.0), SAMPLE_RATE)
    result = runner.invoke(
        app,
        [
            "transcribe",
            str(tmp_path / "clip.wav"),
            "-o",
            str(tmp_path / "out"),
            "--format",
            "json",
            "--max-new-tokens",
            "4",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        f"aero: running {PUBLISHED_MODEL} (found in the local Hugging Face cache" in result.stderr
    )
    assert json.loads((tmp_path / "out" / "clip.json").read_text())["completion_tokens"] >= 1
    # A partial download (no weights) is not a usable default.
    (snapshot / "model.safetensors").unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert choose_model(None).source == AERO_MINI


def test_eval_defaults_the_model_and_takes_task_asr(published, tmp_path, monkeypatch):
    manifest = write_manifest(tmp_path / "data", [1.5, 2.5])
    monkeypatch.setenv("AERO_MODEL", str(published))
    result = runner.invoke(
        app,
        [
            "eval",
            "--task",
            "asr",
            "--data",
            str(manifest),
            "-o",
            str(tmp_path / "run"),
            "--max-new-tokens",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "set by AERO_MODEL" in result.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["counts"]["items"] == 2 and results["model"] == str(published)


@pytest.mark.slow
def test_cli_falls_back_to_aero_mini_offline(tmp_path):
    """The real aero-mini (its parts convert on first use): `aero info` with nothing cached, no
    Hub."""
    out = subprocess.run(
        [sys.executable, "-m", "aero.cli", "info"],
        env=offline_env(tmp_path / "cache"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert "aero: running aero-mini (a small demonstration model" in out.stderr
    assert "aero-mini" in out.stdout
