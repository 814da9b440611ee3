"""The `aero` command line: one thin function per command over library functions."""

from __future__ import annotations

from typing import List, Optional

import typer

app = typer.Typer(help="Aero-1-Audio: transcribe, chat about audio, train and evaluate compact audio LLMs.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


@app.command(context_settings={"allow_extra_args": False})
def train(
    config: Optional[str] = typer.Argument(None, help="YAML file of settings that differ from the defaults."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. max_steps=100 lr=3e-4"),
) -> None:
    """Train or fine-tune (resumes from the newest checkpoint in output_dir). Use torchrun for FSDP2."""
    from aero.train.config import ConfigError, load_config
    from aero.train.loop import train as run

    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides, config = [config] + list(overrides or []), None
    try:
        cfg = load_config(config, overrides or [])
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    summary = run(cfg)
    typer.echo(f"trained {summary['step']} steps; skipped samples: {summary['skipped']}")
    if "model_dir" in summary:
        typer.echo(f"model: {summary['model_dir']}\nadapter: {summary['adapter']}")


def _mount_eval() -> None:
    from aero.evaluation.cli import app as eval_app

    app.add_typer(eval_app, name="eval")


_mount_eval()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
