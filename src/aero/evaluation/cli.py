"""`aero eval`: thin Typer wrappers over the evaluation library (mounted by aero's main CLI).

Notable choices:
- The evaluation itself is the group's callback (`aero eval --model M --task T ...`), so the
  common case needs no sub-command word; `report`, `build-longform` and `compare` are
  sub-commands. Every command only parses options and calls a library function.
- `--model faster-whisper:NAME_OR_DIR` runs the faster-whisper baseline; any other value goes
  to `aero.evaluation.transcriber.load_transcriber`, imported only when needed.
- `librispeech-long` accepts a LibriSpeech directory (built into `<output>/longform` first)
  or a manifest built earlier with `aero eval build-longform`.
- Errors a user can cause (missing data, bad manifest, missing optional package) are printed
  as one sentence and exit with status 1, no traceback.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

console = Console()
app = typer.Typer(
    help="Evaluate a model: WER on ASR sets, accuracy on multiple-choice audio tasks, RTFx."
)

TASKS = (
    "librispeech",
    "librispeech-long",
    "manifest",
    "asr",
    "hf",
    "choice",
)  # asr: a manifest, by its task
_USER_ERRORS = (FileNotFoundError, ValueError, ImportError, NotImplementedError)


def resolve_model(spec: str, max_new_tokens: int | None = None) -> Any:
    """A `Transcriber` for a model spec: `faster-whisper:NAME_OR_DIR`, or anything aero can load."""
    if spec.startswith("faster-whisper:"):
        from .baselines import FasterWhisperTranscriber

        return FasterWhisperTranscriber(spec.split(":", 1)[1])
    try:
        from .transcriber import load_transcriber
    except ImportError as err:
        raise ImportError(
            f"Cannot load model {spec!r}: aero.evaluation.transcriber is not available ({err})."
        ) from None
    return (
        load_transcriber(spec)
        if max_new_tokens is None
        else load_transcriber(spec, max_new_tokens=max_new_tokens)
    )


def load_task_items(
    task: str,
    data: Path | str,
    output: Path,
    gap: float = 0.0,
    split: str | None = None,
    config: str | None = None,
    audio_column: str = "audio",
    text_column: str = "text",
) -> Iterable[Any]:
    from .choice import load_choice_items
    from .datasets import hf_items, librispeech_items, manifest_items
    from .longform import build_librispeech_longform

    if task == "librispeech":
        return librispeech_items(data)
    if task == "librispeech-long":
        if Path(data).is_dir():
            console.print(
                f"Building long-form recordings from {data} into {output / 'longform'} ..."
            )
            return manifest_items(build_librispeech_longform(data, output / "longform", gap))
        return manifest_items(data)
    if task in ("manifest", "asr"):
        return manifest_items(data)
    if task == "hf":
        return hf_items(
            data, split=split, config=config, audio_column=audio_column, text_column=text_column
        )
    if task == "choice":
        return load_choice_items(data)
    raise ValueError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")


def _fail(err: Exception) -> NoReturn:
    # soft_wrap: paths in messages stay on one line, so they can be copied.
    console.print(f"[red]Error: {err}[/red]", soft_wrap=True)
    raise typer.Exit(1)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def _fmt(value: Any) -> str:
    return "–" if value is None else str(value)


def print_results(results: dict[str, Any]) -> None:
    table = Table(title=f"{results['model']} on {results['task']}")
    for column in ("metric", "value", "details"):
        table.add_column(column)
    counts, speed = results["counts"], results["speed"]
    metric = results["metric"]
    table.add_row(
        f"{metric} %", _fmt(results.get(f"{metric}_percent")), _fmt(results.get("reason"))
    )
    if results["kind"] == "asr":
        ci = results.get("ci95_percent")
        table.add_row(
            "95% CI",
            "–" if ci is None else f"{ci[0]:.2f} – {ci[1]:.2f}",
            "bootstrap over utterances",
        )
        table.add_row(
            "S / D / I",
            f"{counts['substitutions']} / {counts['deletions']} / {counts['insertions']}",
            f"empty references: {counts['empty_references']}",
        )
    else:
        for name, cat in results["per_category"].items():
            table.add_row(
                f"  {name}", _fmt(cat["accuracy_percent"]), f"{cat['correct']}/{cat['n']}"
            )
        table.add_row("unparsed", str(counts["unparsed"]), "replies with no option letter")
    table.add_row("items", str(counts["items"]), f"failed: {counts['failed']}")
    table.add_row(
        "RTFx",
        _fmt(speed["rtfx"]),
        f"{speed['audio_seconds']} s audio in {speed['processing_seconds']} s",
    )
    console.print(table)


@app.callback(invoke_without_command=True)
def evaluate(
    ctx: typer.Context,
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="aero model name/dir, or faster-whisper:NAME_OR_DIR (default: as aero transcribe; "
        "stderr says which).",
    ),
    task: str | None = typer.Option(None, "--task", "-t", help=f"One of: {', '.join(TASKS)}."),
    data: str | None = typer.Option(
        None, "--data", "-d", help="Dataset directory, manifest, JSON file or hub id."
    ),
    limit: int | None = typer.Option(None, help="Evaluate only the first N items."),
    batch_size: int = typer.Option(8, help="Items per model call."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Run directory (default: eval-results/MODEL/TASK)."
    ),
    prompt: str | None = typer.Option(None, help="ASR prompt (default: the model's own)."),
    name: str | None = typer.Option(
        None, help="Task name in results and reports (default: the --task value)."
    ),
    cer: bool = typer.Option(False, "--cer", help="Score character error rate instead of WER."),
    gap: float = typer.Option(0.0, help="librispeech-long: seconds of silence between utterances."),
    split: str | None = typer.Option(None, help="hf: dataset split."),
    config: str | None = typer.Option(None, help="hf: dataset configuration (hub only)."),
    audio_column: str = typer.Option("audio", help="hf: audio column."),
    text_column: str = typer.Option("text", help="hf: transcript column."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    max_new_tokens: int | None = typer.Option(
        None, help="Generation limit per item (default: the model's)."
    ),
) -> None:
    """Evaluate MODEL on TASK; writes results.json and samples.jsonl and prints a summary."""
    if ctx.invoked_subcommand is not None:
        return
    if task is None or data is None:
        typer.echo(ctx.get_help())
        console.print("[red]aero eval needs --task and --data (or a sub-command).[/red]")
        raise typer.Exit(2)
    from aero.models import choose_model

    from .runner import run_asr_eval, run_choice_eval

    label = source = model
    if not model:  # the default model, named on stderr with its reason
        choice = choose_model(None)
        typer.echo(choice.notice, err=True)
        label, source = choice.name, choice.source

    task_name = name or task
    output = output or Path("eval-results") / _slug(label) / _slug(task_name)
    try:
        items = load_task_items(task, data, output, gap, split, config, audio_column, text_column)
        transcriber = resolve_model(source, max_new_tokens)
        transcriber.name = label
        with Progress(console=console, transient=True) as bar:
            job = bar.add_task(f"{task_name}", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(job, completed=done, total=total)

            run = (batch_size, limit, output, task_name)
            if task == "choice":
                results = run_choice_eval(transcriber, items, *run, progress)
            else:
                unit = "char" if cer else "word"
                results = run_asr_eval(
                    transcriber, items, *run, prompt, unit=unit, seed=seed, progress=progress
                )
    except _USER_ERRORS as err:
        _fail(err)
    print_results(results)
    console.print(f"Wrote {output / 'results.json'} and {output / 'samples.jsonl'}")
    failed, total = results["counts"]["failed"], results["counts"]["items"]
    if failed:
        note = f"{failed} of {total} items failed; see 'error' in samples.jsonl."
        console.print(f"[yellow]{note}[/yellow]")
    if failed == total:
        raise typer.Exit(1)


@app.command()
def report(
    dirs: list[Path] = typer.Argument(..., help="Run directories (or folders holding them)."),
    output: Path = typer.Option(
        Path("eval-report"), "--output", "-o", help="Where report.md and the charts go."
    ),
) -> None:
    """Merge runs into a markdown table (one row per model, one column per task) and PNG charts."""
    from .report import write_report

    try:
        files = write_report(dirs, output)
    except _USER_ERRORS as err:
        _fail(err)
    console.print(files.markdown.read_text(encoding="utf-8"))
    console.print(f"Wrote {files.markdown}" + "".join(f", {c}" for c in files.charts))


@app.command("build-longform")
def build_longform_cmd(
    source: Path = typer.Argument(
        ..., help="LibriSpeech directory, or a JSONL manifest (with --group-key)."
    ),
    out: Path = typer.Argument(..., help="Output directory for audio/ and manifest.jsonl."),
    gap: float = typer.Option(0.0, help="Seconds of silence between utterances."),
    group_key: str | None = typer.Option(
        None, help="Manifest field that groups utterances into recordings."
    ),
) -> None:
    """Concatenate utterances per group (LibriSpeech: speaker-chapter) into long recordings."""
    from .longform import build_longform_from

    try:
        manifest = build_longform_from(source, out, gap, group_key)
    except _USER_ERRORS as err:
        _fail(err)
    n = sum(1 for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip())
    console.print(f"Wrote {n} recordings and {manifest}")


@app.command()
def compare(
    run_a: Path = typer.Argument(..., help="Run directory of system A."),
    run_b: Path = typer.Argument(..., help="Run directory of system B."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
) -> None:
    """Paired bootstrap of two runs on the items both scored: WER for ASR runs, the mean score
    (token F1 or accuracy) for answer and choice runs."""
    from .report import compare_runs, compare_scores, is_scored_run

    try:
        if is_scored_run(run_a) or is_scored_run(run_b):
            m = compare_scores(run_a, run_b, seed=seed)
            console.print(
                f"{m.n_items} items: A {100 * m.mean_a:.2f} %, B {100 * m.mean_b:.2f} %, "
                f"A - B {100 * m.difference:+.2f} points "
                f"(95% CI {100 * m.ci.low:+.2f} to {100 * m.ci.high:+.2f}); "
                f"A higher in {100 * m.a_higher_fraction:.1f} % of resamples"
            )
            return
        c = compare_runs(run_a, run_b, seed=seed)
    except _USER_ERRORS as err:
        _fail(err)
    console.print(
        f"{c.n_utterances} utterances: A {100 * c.rate_a:.2f} %, B {100 * c.rate_b:.2f} %, "
        f"A - B {100 * c.difference:+.2f} points "
        f"(95% CI {100 * c.ci.low:+.2f} to {100 * c.ci.high:+.2f}); "
        f"A better in {100 * c.a_better_fraction:.1f} % of resamples"
    )
