"""The `aero` command line: one thin function per command over library functions."""

from __future__ import annotations

from typing import List, Optional

import typer

from aero.server_settings import ServerSettings

app = typer.Typer(
    help="Aero-1-Audio: transcribe, chat about audio, train and evaluate compact audio LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command(context_settings={"allow_extra_args": False})
def train(
    config: Optional[str] = typer.Argument(
        None, help="YAML file of settings that differ from the defaults."
    ),
    overrides: Optional[List[str]] = typer.Argument(
        None, help="key=value overrides, e.g. max_steps=100 lr=3e-4"
    ),
) -> None:
    """Train or fine-tune (resumes from output_dir's newest checkpoint); torchrun for FSDP2."""
    from aero.train.config import ConfigError, load_config
    from aero.train.run import train as run

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


# ----- inference: transcribe, chat, serve, info ------------------------------------------------

MODEL_HELP = (
    "'aero-mini', a checkpoint directory or a hub id. Default: $AERO_MODEL, else "
    "lmms-lab/Aero-1-Audio when it is in the local Hugging Face cache or the Hub answers, else "
    "aero-mini (stderr says which and why)."
)
TIMESTAMP_HELP = (
    "Output format: txt, json, srt or vtt. Every format transcribes the whole recording in one "
    "generation; with word timestamps (the default for srt/vtt when the model has a word aligner, "
    "as aero-mini does) srt/vtt cues follow the speech (<= 7 s, <= 2 lines of <= 42 characters) "
    "and json lists every word's time. A model without an aligner gives srt/vtt one cue per 30 s "
    "window, each window transcribed on its own (timing precision 30 s)."
)
WORD_TIMESTAMPS_HELP = (
    "Time every word by aligning the transcript to the audio (aero.timestamps; a model without "
    "its own word aligner borrows aero-mini's); default: on for srt/vtt when the model has one."
)


def _load_engine(
    model: str | None, batch_size: int = 8, int8: bool = False, threads: int | None = None
):
    """The engine for `model`, or for the default model (named on stderr with its reason)."""
    import torch

    from aero.engine import Engine
    from aero.models import choose_model

    choice = choose_model(model)
    if not model:
        typer.echo(choice.notice, err=True)
    if threads:
        torch.set_num_threads(threads)
    try:
        engine = Engine.load(choice.source, quantize=int8, batch_size=batch_size)
    except (OSError, ValueError) as err:
        typer.echo(f"error: cannot load model {choice.name!r}: {err}", err=True)
        raise typer.Exit(2)
    engine.name = choice.name
    return engine


def _options(
    max_new_tokens: int | None,
    temperature: float = 0.0,
    repetition_guard: bool = True,
    fallback: bool = False,
    beam_size: int = 1,
    ctc_weight: float | None = None,
):
    from aero.decoding import FALLBACK_TEMPERATURES, GenerationOptions

    joint = {} if ctc_weight is None else {"ctc_weight": ctc_weight}
    try:
        return GenerationOptions(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            repetition_guard=repetition_guard,
            fallback_temperatures=FALLBACK_TEMPERATURES if fallback else (),
            num_beams=beam_size,
            **joint,
        )
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)


def _transcribe_files(
    engine, paths, targets, format: str, prompt, options, console, words: bool = False
) -> int:
    """Transcribe `paths` into `targets`, each written as soon as it is done, with a progress bar;
    a file that fails is reported and the rest go on. Returns how many failed."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from aero.formats import write_result

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    failed = 0
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("transcribing", total=len(paths))
        sources = [str(p) for p in paths]
        timestamps = format in ("srt", "vtt")
        results = engine.transcribe_iter(
            sources, prompt, options, timestamps, word_timestamps=words
        )
        for i, result in results:
            if isinstance(result, Exception):
                failed += 1
                line = f"[red]failed[/red] {escape(str(paths[i]))}: {escape(str(result))}"
                progress.console.print(line, markup=True, highlight=False, soft_wrap=True)
            else:
                write_result(result, targets[i], format)
                line = f"{paths[i]} -> {targets[i]}{_result_notes(result, options)}"
                progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
            progress.advance(task)
    return failed


def _result_notes(result, options) -> str:
    """What a user should know about one result: a loop cut, a fallback, a warning."""
    notes = [" (stopped a repetition loop)"] if result.stopped_by_repetition else []
    if result.temperature > options.temperature:
        notes.append(f" (temperature fallback: {result.temperature:g})")
    return "".join(notes + [f" (warning: {w})" for w in result.warnings])


@app.command()
def transcribe(
    files: list[str] = typer.Argument(
        ..., help="Audio files and/or directories (searched recursively for audio)."
    ),
    model: str | None = typer.Option(None, help=MODEL_HELP),
    format: str = typer.Option("txt", "--format", "-f", help=TIMESTAMP_HELP),
    output_dir: str = typer.Option(
        ".", "--output-dir", "-o", help="Where <name>.<format> files are written."
    ),
    batch_size: int = typer.Option(8, help="Recordings decoded together (grouped by length)."),
    prompt: str | None = typer.Option(
        None, help="Instruction instead of the model's transcription prompt (aero info shows it)."
    ),
    max_new_tokens: int | None = typer.Option(
        None, help="Token budget per recording (default: 32 + 8 per second)."
    ),
    int8: bool = typer.Option(
        False, "--int8", help="Dynamic int8 quantization of the LM's Linear layers (CPU)."
    ),
    threads: int | None = typer.Option(
        None, help="CPU threads for torch (default: torch's choice)."
    ),
    fallback: bool = typer.Option(
        False,
        "--fallback/--no-fallback",
        help="When greedy decoding loops, decode that recording again at temperatures "
        "0.2, 0.4 ... 1.0 (seeded) and keep the first reply without a loop (Whisper's "
        "temperature fallback).",
    ),
    beam_size: int = typer.Option(1, help="Beam search with this many beams (1: greedy)."),
    ctc_weight: float = typer.Option(
        None,
        help="Weight of a CTC connector's scores in joint CTC/LM decoding (aero-mini v2; "
        "0: the LM alone; default 0.5).",
    ),
    word_timestamps: bool | None = typer.Option(
        None, "--word-timestamps/--no-word-timestamps", help=WORD_TIMESTAMPS_HELP
    ),
) -> None:
    """Transcribe recordings, each result written as soon as it is done (exit 1 if any failed)."""
    from pathlib import Path

    from rich.console import Console

    from aero.formats import FORMATS, collect_audio_files, output_paths

    if format not in FORMATS:
        typer.echo(
            f"error: --format must be one of {', '.join(FORMATS)}, not {format!r}.", err=True
        )
        raise typer.Exit(2)
    paths = collect_audio_files(files)
    if not paths:
        typer.echo("error: no audio files found in the given paths.", err=True)
        raise typer.Exit(2)
    options = _options(
        max_new_tokens, fallback=fallback, beam_size=beam_size, ctc_weight=ctc_weight
    )
    engine = _load_engine(model, batch_size, int8, threads)
    targets = output_paths(paths, Path(output_dir), format)
    if word_timestamps is None:  # a model without its own aligner borrows aero-mini's on request
        word_timestamps = format in ("srt", "vtt") and engine.has_word_aligner
    console = Console(stderr=True)
    failed = _transcribe_files(
        engine, paths, targets, format, prompt, options, console, words=word_timestamps
    )
    console.print(f"{len(paths) - failed} transcribed, {failed} failed", highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command()
def align(
    audio: str = typer.Argument(..., help="An audio file."),
    transcript: str = typer.Argument(..., help="The words spoken in it, or a text file of them."),
    model: str | None = typer.Option(None, help=MODEL_HELP),
    format: str = typer.Option("json", "--format", "-f", help="json (every word), srt or vtt."),
    output: str | None = typer.Option(None, "--output", "-o", help="File (default: stdout)."),
    threads: int | None = typer.Option(None, help="CPU threads for torch."),
) -> None:
    """Forced alignment: the time of every word of TRANSCRIPT in AUDIO (no transcription)."""
    from pathlib import Path

    from aero.audio import AudioError, duration_seconds, load_audio
    from aero.engine import Result, audio_info
    from aero.formats import to_json, to_srt, to_vtt

    writers = {"json": to_json, "srt": to_srt, "vtt": to_vtt}
    if format not in writers:
        typer.echo(f"error: --format must be json, srt or vtt, not {format!r}.", err=True)
        raise typer.Exit(2)
    text = Path(transcript).read_text() if Path(transcript).is_file() else transcript
    try:
        samples = load_audio(audio)
    except AudioError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    engine = _load_engine(model, threads=threads)
    try:
        words = engine.word_aligner().align(samples, text)
    except (FileNotFoundError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    info = [audio_info(duration_seconds(samples))]
    result = Result(" ".join(text.split()), [], "stop", 0, audios=info, words=words)
    rendered = writers[format](result)
    if output:
        Path(output).write_text(rendered)
    else:
        typer.echo(rendered, nl=False)


@app.command()
def chat(
    audio: list[str] = typer.Argument(..., help="Audio files the conversation is about."),
    ask: str | None = typer.Option(
        None, "--ask", "-a", help="One question; without it, an interactive chat."
    ),
    model: str | None = typer.Option(None, help=MODEL_HELP),
    max_new_tokens: int | None = typer.Option(None, help="Reply budget (default 512)."),
    temperature: float = typer.Option(0.0, help="0 is greedy."),
    int8: bool = typer.Option(
        False, "--int8", help="Dynamic int8 quantization of the LM's Linear layers (CPU)."
    ),
    threads: int | None = typer.Option(None, help="CPU threads for torch."),
) -> None:
    """Ask about audio; the reply streams as it is generated. Interactive without --ask."""
    from aero.audio import AudioError, load_audio

    try:
        sources = [load_audio(a) for a in audio]
    except AudioError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    options = _options(max_new_tokens, temperature)
    engine = _load_engine(model, 1, int8, threads)
    parts = [{"type": "audio", "audio": s} for s in sources]
    messages: list = []
    question = ask
    while True:
        if question is None:
            try:
                question = input("you> ").strip()
            except (EOFError, KeyboardInterrupt):
                typer.echo()
                return
            if question in ("", "exit", "quit"):
                return
        content = parts + [{"type": "text", "text": question}] if not messages else question
        messages.append({"role": "user", "content": content})
        try:
            stream = engine.stream(engine.prepare(messages, options), options)
        except ValueError as err:  # AudioError, ContextLengthError
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2)
        for piece in stream:
            typer.echo(piece, nl=False)
        typer.echo()
        if stream.result.stopped_by_repetition:
            typer.echo("[stopped: the reply was repeating itself]", err=True)
        messages.append({"role": "assistant", "content": stream.result.text})
        if ask is not None:
            return
        question = None


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    ctx: typer.Context,
    model: str | None = typer.Option(None, help=MODEL_HELP),
    host: str = typer.Option(
        "127.0.0.1", help="Interface to bind (0.0.0.0 exposes it to the network)."
    ),
    port: int = typer.Option(8000),
    api_key: str | None = typer.Option(
        None,
        envvar="AERO_API_KEY",
        help="Require 'Authorization: Bearer KEY' (all routes but /health).",
    ),
    max_upload_mb: float = typer.Option(
        ServerSettings.max_upload_bytes / 2**20,
        help="Largest upload or request body, MB (413 above).",
    ),
    max_audio_seconds: float = typer.Option(
        ServerSettings.max_audio_seconds, help="Longest audio per request, seconds (400 above)."
    ),
    max_queue: int = typer.Option(
        ServerSettings.max_queue, help="Requests waiting or running at once; more get 503."
    ),
    timeout: float = typer.Option(
        ServerSettings.timeout_s, help="Seconds a request may wait and run before a 504."
    ),
    batch_size: int = typer.Option(
        ServerSettings.batch_size, help="Queued requests decoded together."
    ),
    int8: bool = typer.Option(
        False, "--int8", help="Dynamic int8 quantization of the LM's Linear layers (CPU)."
    ),
    threads: int | None = typer.Option(None, help="CPU threads for torch."),
    fallback: bool = typer.Option(
        ServerSettings.fallback,
        "--fallback/--no-fallback",
        help="Transcriptions at temperature 0 that loop are decoded again at 0.2 ... 1.0.",
    ),
    engine_name: str = typer.Option(
        "aero",
        "--engine",
        help="'aero' (this process, the light default) or 'vllm': start `vllm serve` from "
        "vLLM's own environment (scripts/vllm_env.sh) on the same model; options after the "
        "known ones go to vLLM as they are.",
    ),
    vllm_python: str | None = typer.Option(
        None, help="vLLM's python (default: $AERO_VLLM_PYTHON, else .vllm-venv/bin/python)."
    ),
) -> None:
    """OpenAI-compatible server: /v1/audio/transcriptions, /v1/chat/completions, /v1/models."""
    if engine_name not in ("aero", "vllm"):
        typer.echo(f"error: --engine must be 'aero' or 'vllm', not {engine_name!r}.", err=True)
        raise typer.Exit(2)
    if engine_name == "vllm":
        if int8 or fallback:
            typer.echo("error: --int8 and --fallback are aero's engine's options.", err=True)
            raise typer.Exit(2)
        raise typer.Exit(_serve_vllm(model, host, port, api_key, vllm_python, ctx.args))
    if ctx.args:
        typer.echo(
            f"error: unknown options {' '.join(ctx.args)} (vLLM's need --engine vllm).", err=True
        )
        raise typer.Exit(2)
    import uvicorn

    from aero.server import create_app

    engine = _load_engine(model, batch_size, int8, threads)
    settings = ServerSettings(
        model_name=engine.name,
        api_key=api_key or None,
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_audio_seconds=max_audio_seconds,
        max_queue=max_queue,
        timeout_s=timeout,
        batch_size=batch_size,
        fallback=fallback,
    )
    uvicorn.run(create_app(engine, settings), host=host, port=port, log_level="info")


def _serve_vllm(model, host, port, api_key, vllm_python, extra) -> int:
    """vLLM's OpenAI server on the model, as a child process; its exit status."""
    import subprocess

    from aero.models import choose_model
    from aero.vllm.launch import VllmNotFound, checkpoint_dir, find_vllm_python, serve_command

    choice = choose_model(model)
    if not model:
        typer.echo(choice.notice, err=True)
    try:
        python = find_vllm_python(vllm_python)
    except VllmNotFound as err:
        typer.echo(f"error: {err}", err=True)
        return 2
    source = checkpoint_dir(choice.source)
    command = serve_command(python, source, choice.name, host, port, api_key, extra)
    typer.echo(f"aero: serving {source} with vLLM ({python}) at http://{host}:{port}", err=True)
    try:
        return subprocess.run(command).returncode
    except KeyboardInterrupt:  # the terminal's Ctrl-C reached vLLM too; it stops itself
        return 130


@app.command()
def info(model: str | None = typer.Argument(None, help=MODEL_HELP)) -> None:
    """Model facts: parameters per part, context, audio token rate, longest audio per request."""
    from rich.console import Console
    from rich.table import Table

    from aero.engine import model_facts

    engine = _load_engine(model)
    table = Table(title=engine.name, show_header=False)
    for key, value in model_facts(engine).items():
        table.add_row(key, str(value))
    Console().print(table)


def _mount_subcommands() -> None:
    from aero.data.cli import app as data_app
    from aero.evaluation.cli import app as eval_app

    app.add_typer(eval_app, name="eval")
    app.add_typer(data_app, name="data")


_mount_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
