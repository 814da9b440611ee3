"""`aero eval` end to end with a real (tiny, random) Aero model loaded from a directory."""

import json

from typer.testing import CliRunner

from aero.cli import app
from conftest import SAMPLE_RATE, make_tiny_model, make_tiny_processor, tone


def test_eval_tiny_model_writes_results_samples_and_report(tmp_path):
    import soundfile as sf

    model_dir = tmp_path / "tiny"
    make_tiny_model().save_pretrained(model_dir)
    make_tiny_processor(system_prompt=None).save_pretrained(model_dir)
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i, (seconds, text) in enumerate(
        [(1.0, "hello world"), (2.5, "the quick brown fox"), (0.7, "yes")]
    ):
        sf.write(data / f"{i}.wav", tone(seconds, seed=i), SAMPLE_RATE)
        rows.append(json.dumps({"audio": f"{i}.wav", "text": text, "id": f"utt{i}"}))
    (data / "manifest.jsonl").write_text("\n".join(rows) + "\n")

    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "eval",
            "--model",
            str(model_dir),
            "--task",
            "manifest",
            "--data",
            str(data / "manifest.jsonl"),
            "--output",
            str(out),
            "--batch-size",
            "2",
            "--max-new-tokens",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["counts"]["items"] == 3 and results["counts"]["failed"] == 0
    assert results["speed"]["audio_seconds"] > 4 and results["speed"]["rtfx"] > 0
    samples = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["id"] for s in samples] == ["utt0", "utt1", "utt2"]
    assert all(isinstance(s["hypothesis"], str) for s in samples)

    report = runner.invoke(app, ["eval", "report", str(out), "--output", str(tmp_path / "rep")])
    assert report.exit_code == 0, report.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "manifest" in md and str(model_dir.name) in md
    assert any(p.suffix == ".png" and p.stat().st_size > 1000 for p in (tmp_path / "rep").iterdir())
