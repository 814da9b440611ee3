"""Merge runs into the release-style table (markdown) and charts (PNG); compare two runs.

Notable choices:
- One row per model, one column per task, in first-seen order (error-rate tasks before
  accuracy tasks); WER (or CER / accuracy) as a
  percentage with 2 decimals. If a (model, task) pair was run twice, the newest run wins.
- "Avg WER" averages only WER tasks and only when the model has all of them: an average over
  a different task subset would not be comparable across rows, so it shows "–" instead.
- Charts use matplotlib's object API (`Figure`, no pyplot), which renders with Agg without
  touching global backend state: WER per task per model as grouped bars, and parameters vs
  average WER when parameter counts are known.
- `compare_runs` re-sums the per-utterance S/D/I stored in samples.jsonl, so two finished runs
  can be compared with a paired bootstrap without realigning or rerunning anything;
  `compare_scores` does the same for answer and choice runs from each item's stored score
  (`token_f1` when the run has it, else `correct` or `exact` as 0/1).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runner import RESULTS_NAME, SAMPLES_NAME
from .wer import (
    PairedComparison,
    PairedMeans,
    UtteranceErrors,
    paired_bootstrap,
    paired_mean_bootstrap,
)

REPORT_NAME = "report.md"
WER_CHART = "wer_by_task.png"
ACCURACY_CHART = "accuracy_by_task.png"
SCATTER_CHART = "parameters_vs_wer.png"

_HEADINGS = {"wer": "WER %", "cer": "CER %", "accuracy": "Acc %"}


@dataclass(frozen=True)
class ReportTable:
    models: list[str]
    tasks: list[str]
    metrics: dict[str, str]  # task -> "wer" | "cer" | "accuracy"
    cells: dict[tuple[str, str], float | None]  # (model, task) -> percentage
    rtfx: dict[tuple[str, str], float | None]
    parameters: dict[str, int | None]
    average_wer: dict[str, float | None]


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    charts: list[Path]


def find_results(paths: Sequence[str | Path]) -> list[Path]:
    """results.json files: given directly, in a run directory, or anywhere below a directory."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif (path / RESULTS_NAME).is_file():
            found.append(path / RESULTS_NAME)
        elif path.is_dir() and (below := sorted(path.rglob(RESULTS_NAME))):
            found.extend(below)
        else:
            raise FileNotFoundError(
                f"No {RESULTS_NAME} found at {path}; pass a directory written by `aero eval`."
            )
    return found


def load_runs(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    for path in find_results(paths):
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err.msg}).") from None
        if not isinstance(run, dict) or not all(k in run for k in ("model", "task", "metric")):
            raise ValueError(
                f"{path} is not an `aero eval` results file (needs model, task and metric)."
            )
        key = (run["model"], run["task"])
        stamp = run.get("environment", {}).get("timestamp", "")
        if key not in runs or stamp >= runs[key].get("environment", {}).get("timestamp", ""):
            runs[key] = run
    return list(runs.values())


def build_table(runs: Sequence[dict[str, Any]]) -> ReportTable:
    models = list(dict.fromkeys(r["model"] for r in runs))
    metrics = {r["task"]: r["metric"] for r in runs}
    # Error-rate columns first (next to their average), accuracy columns after; stable otherwise.
    tasks = sorted(dict.fromkeys(r["task"] for r in runs), key=lambda t: metrics[t] == "accuracy")
    cells = {(r["model"], r["task"]): r.get(f"{r['metric']}_percent") for r in runs}
    rtfx = {(r["model"], r["task"]): r.get("speed", {}).get("rtfx") for r in runs}
    parameters = {
        m: next(
            (r.get("parameters") for r in runs if r["model"] == m and r.get("parameters")), None
        )
        for m in models
    }
    wer_tasks = [t for t in tasks if metrics[t] == "wer"]
    average = {}
    for model in models:
        values = [cells.get((model, t)) for t in wer_tasks]
        complete = wer_tasks and all(v is not None for v in values)
        average[model] = round(sum(values) / len(values), 2) if complete else None
    return ReportTable(models, tasks, metrics, cells, rtfx, parameters, average)


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def to_markdown(table: ReportTable) -> str:
    has_wer = any(m == "wer" for m in table.metrics.values())
    header = [
        "Model",
        *(f"{t} ({_HEADINGS.get(table.metrics[t], table.metrics[t])})" for t in table.tasks),
    ]
    header += ["Avg WER %"] if has_wer else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in table.models:
        row = [model, *(_cell(table.cells.get((model, t))) for t in table.tasks)]
        row += [_cell(table.average_wer[model])] if has_wer else []
        lines.append("| " + " | ".join(row) + " |")
    speed = ["| Model | " + " | ".join(table.tasks) + " |", "|" + "---|" * (len(table.tasks) + 1)]
    for model in table.models:
        speed.append(
            "| "
            + " | ".join([model, *(_cell(table.rtfx.get((model, t))) for t in table.tasks)])
            + " |"
        )
    return "\n".join(
        [
            "## Results",
            "",
            *lines,
            "",
            "## Speed (RTFx: audio seconds / processing seconds)",
            "",
            *speed,
            "",
        ]
    )


def _bar_chart(table: ReportTable, tasks: list[str], ylabel: str, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.2 * len(tasks) * max(1, len(table.models)) ** 0.5 + 2), 4.5))
    ax = fig.add_subplot()
    width = 0.8 / len(table.models)
    for k, model in enumerate(table.models):
        values = [table.cells.get((model, t)) for t in tasks]
        xs = [i + (k - (len(table.models) - 1) / 2) * width for i in range(len(tasks))]
        bars = ax.bar(xs, [0.0 if v is None else v for v in values], width, label=model)
        ax.bar_label(bars, labels=[_cell(v) for v in values], fontsize=7)
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _scatter(table: ReportTable, path: Path) -> Path | None:
    points = [(table.parameters[m], table.average_wer[m], m) for m in table.models]
    points = [p for p in points if p[0] and p[1] is not None]
    if not points:
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    for params, wer, model in points:
        ax.scatter(params / 1e6, wer)
        ax.annotate(
            model, (params / 1e6, wer), textcoords="offset points", xytext=(4, 4), fontsize=8
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(
        ScalarFormatter()
    )  # "100", not "10^2": sizes read as in the release
    ax.margins(x=0.3, y=0.15)  # room for the labels next to the points
    ax.set_xlabel("parameters (millions, log scale)")
    ax.set_ylabel("average WER %")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def write_report(paths: Sequence[str | Path], output_dir: str | Path) -> ReportFiles:
    runs = load_runs(paths)
    table = build_table(runs)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = output_dir / REPORT_NAME
    markdown.write_text(to_markdown(table), encoding="utf-8")
    charts = []
    for metrics, name, label in (
        (("wer", "cer"), WER_CHART, "error rate %"),
        (("accuracy",), ACCURACY_CHART, "accuracy %"),
    ):
        tasks = [t for t in table.tasks if table.metrics[t] in metrics]
        if tasks:
            charts.append(_bar_chart(table, tasks, label, output_dir / name))
    if (scatter := _scatter(table, output_dir / SCATTER_CHART)) is not None:
        charts.append(scatter)
    return ReportFiles(markdown, charts)


def _samples(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / SAMPLES_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"No {SAMPLES_NAME} in {run_dir}; pass a directory written by `aero eval`."
        )
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def is_scored_run(run_dir: str | Path) -> bool:
    """True for an answer or choice run (items carry a score), False for an ASR run."""
    return not any("reference_length" in s for s in _samples(Path(run_dir)))


def _load_errors(run_dir: Path) -> dict[str, UtteranceErrors]:
    errors = {}
    for s in _samples(run_dir):
        if s.get("error") is None and "reference_length" in s:
            hits = s["reference_length"] - s["substitutions"] - s["deletions"]
            errors[s["id"]] = UtteranceErrors(
                s["reference_length"], s["substitutions"], s["deletions"], s["insertions"], hits
            )
    return errors


def compare_runs(
    run_a: str | Path, run_b: str | Path, n_resamples: int = 1000, seed: int = 0
) -> PairedComparison:
    """Paired bootstrap of two ASR runs over the utterances both scored."""
    a, b = _by_common_id(run_a, run_b, _load_errors, "utterance")
    return paired_bootstrap(a, b, n_resamples=n_resamples, seed=seed)


def _by_common_id(run_a: str | Path, run_b: str | Path, load, what: str) -> tuple[list, list]:
    """Both runs' entries (`load` of each run directory) for the ids both hold, in A's order."""
    a, b = load(Path(run_a)), load(Path(run_b))
    common = [k for k in a if k in b]
    if not common:
        raise ValueError(f"Runs {run_a} and {run_b} share no scored {what} ids.")
    return [a[k] for k in common], [b[k] for k in common]


def _load_scores(run_dir: Path) -> dict[str, float]:
    """Each answered item's score: its token F1 when the run judged by agreement, else 0/1
    (`correct` of a choice run, `exact` of an answer run judged by exact match)."""
    scores = {}
    for s in _samples(run_dir):
        if s.get("error") is None:
            score = next((s[k] for k in ("token_f1", "correct", "exact") if k in s), None)
            if score is not None:
                scores[s["id"]] = float(score)
    return scores


def compare_scores(
    run_a: str | Path, run_b: str | Path, n_resamples: int = 1000, seed: int = 0
) -> PairedMeans:
    """Paired bootstrap of two answer (or choice) runs' mean score over the items both answered."""
    a, b = _by_common_id(run_a, run_b, _load_scores, "item")
    return paired_mean_bootstrap(a, b, n_resamples=n_resamples, seed=seed)
