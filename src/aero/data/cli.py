"""`aero data`: make training and held-out data."""

from __future__ import annotations

import time

import typer

app = typer.Typer(
    help="Make training and held-out data.", no_args_is_help=True, pretty_exceptions_enable=False
)


@app.callback()
def _group() -> None:
    """Make training and held-out data."""  # a callback keeps `synth` a subcommand


@app.command(
    help="Synthesize speech data (espeak-ng, festival, sox) for aero-mini; "
    "instruction answers come from SmolLM2."
)
def synth(
    out: str = typer.Argument(
        ..., help="Output folder: audio/*.flac and one <split>.jsonl per split."
    ),
    recipe: str = typer.Option(
        "train", help="train, heldout, tiny, or a .yaml file (see configs/data/)."
    ),
    samples: int | None = typer.Option(None, help="Samples per split (default: the recipe's)."),
    seed: int = typer.Option(0, help="Same seed, same manifests and audio."),
    workers: int = typer.Option(2, help="Synthesis processes."),
    answers_cache: str | None = typer.Option(
        None, help="JSON cache of the LLM's answers (default OUT/llm_answers.json)."
    ),
) -> None:
    from aero.data.synth import RecipeError, ToolMissing, load_recipe, synthesize

    try:
        plan = load_recipe(recipe)
        start = time.perf_counter()
        summary = synthesize(
            out,
            plan,
            seed=seed,
            samples=samples,
            workers=workers,
            answers_cache=answers_cache,
            progress=True,
        )
    except (RecipeError, ToolMissing) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    elapsed = time.perf_counter() - start
    failed = 0
    for name, s in summary["splits"].items():
        typer.echo(
            f"{name}: {s['samples']} samples, {s['seconds'] / 3600:.2f} h -> {s['manifest']}"
        )
        if s["failed"]:
            failed += s["failed"]
            typer.echo(
                f"{name}: {s['failed']} clips failed and were left out; see {name}.failed.jsonl",
                err=True,
            )
    clips, render = summary["clips"], summary["render_seconds"]
    typer.echo(
        f"{clips} clips in {elapsed:.1f} s "
        f"(planning + LLM answers {summary['plan_llm_seconds']:.1f} s; "
        f"audio {clips / max(render, 1e-9):.2f} clips/s)"
    )
    if failed:
        raise typer.Exit(1)
