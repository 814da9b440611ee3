"""Report: merged markdown table, PNG charts, CLI `report` and `compare`."""

import json

import pytest
from typer.testing import CliRunner

from aero.evaluation.cli import app
from aero.evaluation.report import (
    build_table,
    compare_runs,
    compare_scores,
    load_runs,
    to_markdown,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(
    root,
    model,
    task,
    metric,
    value,
    params=None,
    stamp="2026-01-01T00:00:00+00:00",
    rtfx=50.0,
    samples=(),
):
    d = root / f"{model}-{task}"
    d.mkdir(parents=True)
    results = {
        "model": model,
        "task": task,
        "kind": "choice" if metric == "accuracy" else "asr",
        "metric": metric,
        f"{metric}_percent": value,
        "parameters": params,
        "speed": {"rtfx": rtfx},
        "environment": {"timestamp": stamp},
    }
    (d / "results.json").write_text(json.dumps(results))
    (d / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return d


def _two_models(tmp_path):
    a, b = tmp_path / "runs-a", tmp_path / "runs-b"
    _run(a, "aero-mini", "clean", "wer", 3.0, params=150_000_000)
    _run(a, "aero-mini", "other", "wer", 7.5, params=150_000_000)
    _run(a, "aero-mini", "mmau", "accuracy", 41.0)
    _run(b, "whisper-tiny", "clean", "wer", 5.66, params=39_000_000)
    _run(b, "whisper-tiny", "other", "wer", 15.45, params=39_000_000, rtfx=None)
    return a, b


def test_table_cells_average_and_markdown(tmp_path):
    a, b = _two_models(tmp_path)
    table = build_table(load_runs([a, b]))
    assert table.models == ["aero-mini", "whisper-tiny"] and table.tasks == [
        "clean",
        "other",
        "mmau",
    ]
    assert table.cells[("whisper-tiny", "other")] == 15.45
    assert table.average_wer == {"aero-mini": 5.25, "whisper-tiny": 10.55}  # WER tasks only
    md = to_markdown(table)
    assert "| Model | clean (WER %) | other (WER %) | mmau (Acc %) | Avg WER % |" in md
    assert "| aero-mini | 3.00 | 7.50 | 41.00 | 5.25 |" in md
    assert "| whisper-tiny | 5.66 | 15.45 | – | 10.55 |" in md
    assert "| whisper-tiny | 50.00 | – | – |" in md  # speed table: missing RTFx shown as –


def test_average_needs_every_wer_task_and_newest_run_wins(tmp_path):
    _run(tmp_path / "x", "m1", "clean", "wer", 2.0)
    _run(tmp_path / "x", "m1", "other", "wer", 4.0)
    _run(tmp_path / "y", "m2", "clean", "wer", 9.0)
    _run(tmp_path / "z", "m1", "clean", "wer", 1.0, stamp="2026-02-01T00:00:00+00:00")  # a rerun
    table = build_table(load_runs([tmp_path]))
    assert table.cells[("m1", "clean")] == 1.0
    assert table.average_wer == {"m1": 2.5, "m2": None}


def test_write_report_and_pngs(tmp_path):
    a, b = _two_models(tmp_path)
    files = write_report([a, b], tmp_path / "report")
    assert files.markdown.read_text().startswith("## Results")
    names = sorted(p.name for p in files.charts)
    assert names == ["accuracy_by_task.png", "parameters_vs_wer.png", "wer_by_task.png"]
    for chart in files.charts:
        data = chart.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_cli_report(tmp_path):
    a, b = _two_models(tmp_path)
    result = CliRunner().invoke(app, ["report", str(a), str(b), "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "aero-mini" in result.output and (tmp_path / "out" / "report.md").is_file()
    assert (tmp_path / "out" / "wer_by_task.png").read_bytes().startswith(PNG_MAGIC)
    missing = CliRunner().invoke(
        app, ["report", str(tmp_path / "nothing"), "--output", str(tmp_path / "o2")]
    )
    assert missing.exit_code == 1 and "No results.json" in missing.output


def _sample(uid, ref_len, s, d, i):
    return {
        "id": uid,
        "reference_length": ref_len,
        "substitutions": s,
        "deletions": d,
        "insertions": i,
        "error": None,
    }


def test_compare_runs_pairs_by_id(tmp_path):
    a = _run(
        tmp_path, "A", "t", "wer", 0, samples=[_sample(f"u{k}", 10, 1, 0, 0) for k in range(30)]
    )
    b_samples = [_sample(f"u{k}", 10, 2, 1, 0) for k in reversed(range(30))]  # other order
    b_samples.append({"id": "extra", "error": "AudioError: unreadable"})
    b = _run(tmp_path, "B", "t", "wer", 0, samples=b_samples)
    c = compare_runs(a, b, n_resamples=200)
    assert (
        c.n_utterances == 30 and c.rate_a == 0.1 and c.rate_b == 0.3 and c.a_better_fraction == 1.0
    )
    result = CliRunner().invoke(app, ["compare", str(a), str(b)])
    assert result.exit_code == 0 and "A 10.00 %, B 30.00 %" in result.output


def test_compare_scores_pairs_answer_runs_by_id(tmp_path):
    def answer(k, f1):
        return {"id": f"q{k}", "response": "x", "token_f1": f1, "error": None}

    a = _run(tmp_path, "A", "instruct", "accuracy", 0, samples=[answer(k, 0.6) for k in range(30)])
    b_samples = [answer(k, 0.4) for k in reversed(range(30))]  # other order
    b_samples.append({"id": "failed", "response": None, "error": "AudioError: unreadable"})
    b = _run(tmp_path, "B", "instruct", "accuracy", 0, samples=b_samples)
    m = compare_scores(a, b, n_resamples=200)
    assert m.n_items == 30 and m.difference == pytest.approx(0.2) and m.a_higher_fraction == 1.0
    result = CliRunner().invoke(app, ["compare", str(a), str(b)])
    assert result.exit_code == 0 and "A 60.00 %, B 40.00 %, A - B +20.00 points" in result.output
    # choice runs score 0/1 from `correct`
    c = _run(
        tmp_path,
        "C",
        "choice",
        "accuracy",
        0,
        samples=[{"id": f"q{k}", "correct": k % 2 == 0, "error": None} for k in range(30)],
    )
    assert compare_scores(c, c).mean_a == pytest.approx(0.5)
    # answer runs judged by exact match score 0/1 from `exact`
    e = _run(
        tmp_path,
        "E",
        "understanding",
        "accuracy",
        0,
        samples=[{"id": f"q{k}", "exact": k % 3 == 0, "error": None} for k in range(30)],
    )
    assert compare_scores(e, c).difference == pytest.approx(10 / 30 - 0.5)
    empty = _run(tmp_path, "D", "instruct", "accuracy", 0, samples=[])
    result = CliRunner().invoke(app, ["compare", str(a), str(empty)])
    assert result.exit_code == 1 and "share no scored item ids" in result.output
