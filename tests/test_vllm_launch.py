"""`aero serve --engine vllm` in aero's environment: finding vLLM's python, the command it runs,
clear errors. A stand-in python records the command (the real server: tests/test_vllm.py)."""

import json
import stat
import sys

import pytest
from typer.testing import CliRunner

from aero.cli import app
from aero.vllm import launch


def test_serve_command_passes_vllms_own_options_through():
    command = launch.serve_command(
        "/env/bin/python", "/m", "aero-mini", "0.0.0.0", 9000, "key", ["--dtype", "float32"]
    )
    assert command == [
        "/env/bin/python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/m",
        "--host",
        "0.0.0.0",
        "--port",
        "9000",
        "--served-model-name",
        "aero-mini",
        "--api-key",
        "key",
        "--dtype",
        "float32",
    ]


def test_missing_vllm_environment_says_how_to_build_it(monkeypatch, tmp_path):
    monkeypatch.delenv(launch.VLLM_PYTHON_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(launch.VllmNotFound, match="scripts/vllm_env.sh"):
        launch.find_vllm_python()
    with pytest.raises(launch.VllmNotFound, match="No python at /nowhere"):
        launch.find_vllm_python("/nowhere")


@pytest.fixture
def recorder(tmp_path):
    """A stand-in for vLLM's python: writes its arguments to a file and exits 0."""
    script = tmp_path / "python"
    record = tmp_path / "args.json"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, record


def test_aero_serve_engine_vllm_runs_vllms_server_on_a_checkpoint(base, recorder):
    script, record = recorder
    args = ["serve", "--engine", "vllm", "--model", str(base), "--port", "8123"]
    args += ["--vllm-python", str(script), "--dtype", "float32", "--max-model-len", "4096"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(record.read_text()) == [
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(base),
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--served-model-name",
        str(base),
        "--dtype",
        "float32",
        "--max-model-len",
        "4096",
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--engine", "tgi"], "--engine must be 'aero' or 'vllm'"),
        (["--engine", "vllm", "--int8"], "aero's engine's options"),
        (["--dtype", "float32"], "need --engine vllm"),
        (["--engine", "vllm", "--vllm-python", "/nowhere"], "No python at /nowhere"),
    ],
)
def test_serve_engine_errors_are_clear(base, args, message):
    result = CliRunner().invoke(app, ["serve", "--model", str(base)] + args)
    assert result.exit_code == 2
    assert message in result.output
