"""scripts/reproduce_aero_mini.sh --smoke: the whole aero-mini recipe (data, five training legs,
held-out evaluation) at a few samples and steps, so a broken link in the chain shows in minutes
rather than hours into the real run. About 5 minutes on 2 cores: marked slow."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[1]
STEPS = [
    "data-train",
    "data-heldout",
    "data-long",
    "data-flite",
    "stage1-align",
    "stage2-first",
    "stage2",
    "stage2b",
    "stage2c",
    "stage2d",
    "eval",
]


@pytest.mark.slow
def test_reproduce_script_runs_every_step_and_resumes(tmp_path):
    for tool in ("espeak-ng", "text2wave", "flite", "sox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not on PATH (bash scripts/setup.sh installs the speech tools)")
    script = REPO / "scripts" / "reproduce_aero_mini.sh"
    run = subprocess.run(
        ["bash", str(script), "--smoke", str(tmp_path)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "runs" / ".done").iterdir()) == sorted(STEPS)

    adapter = tmp_path / "runs" / "aero-mini-2d" / "final" / "adapter.safetensors"
    with safe_open(adapter, "pt") as f:
        keys = list(f.keys())
    assert any("audio_modal_projector" in k for k in keys) and any("lora" in k for k in keys)
    # 2d went on from 2c, 2c from 2b, 2b from stage 2, stage 2 from the CTC stage.
    for run_dir, parent in [
        ("aero-mini-2d", "aero-mini-2c"),
        ("aero-mini-2b", "aero-mini"),
        ("aero-mini", "aero-mini-align"),
    ]:
        config = json.loads((tmp_path / "runs" / run_dir / "config.json").read_text())
        assert config["init_adapter"] == f"runs/{parent}/final/adapter.safetensors"
    table = (tmp_path / "eval-results" / "aero-mini-2d" / "table.md").read_text()
    assert "| aero-mini |" in table and "| whisper-tiny.en |" in table

    again = subprocess.run(
        ["bash", str(script), "--smoke", str(tmp_path)], capture_output=True, text=True
    )
    assert again.returncode == 0
    assert again.stdout.count("done earlier") == len(STEPS)
