"""Run a model over an evaluation set; write `results.json` and `samples.jsonl`.

Notable choices:
- The model side is duck-typed (`Transcriber`): anything with `name`, `transcribe` and, for
  multiple-choice tasks, `answer` can be scored, so aero and a faster-whisper baseline go
  through exactly the same loading, scoring and timing code.
- Audio is decoded with `aero.audio.load_audio` (16 kHz mono float32) inside the timed region:
  RTFx = audio seconds / processing seconds counts loading, features, generation and decoding.
  One untimed warm-up call on the first item runs before, so one-off costs (lazy init, kernel
  compilation, caches) do not count.
- A failing item (unreadable audio, a model error) is recorded with its error in
  samples.jsonl and counted as `failed`; the rest continue. When a whole batch raises, its
  items are retried one by one so only the culprit fails. Failed items are not in the WER.
- WER is reported as a fraction and as a percentage rounded to 2 decimals, with S/D/I
  counts, a seeded bootstrap 95% CI and the normalizer protocol, per the release's tables.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from aero.audio import duration_seconds, load_audio

from .choice import ChoiceItem, build_prompt, parse_choice, score_choices
from .datasets import EvalItem
from .normalize import PROTOCOL, normalize
from .wer import Unit, align, bootstrap_ci, corpus_score

# The harness prompt for ASR (release protocol); models that take instructions should use it.
ASR_PROMPT = "Please recognize the speech and only output the recognized content:"

RESULTS_NAME = "results.json"
SAMPLES_NAME = "samples.jsonl"

Item = TypeVar("Item", EvalItem, ChoiceItem)


class Transcriber(Protocol):
    name: str

    def transcribe(self, audios: list[np.ndarray], prompt: str | None = None) -> list[str]:
        """One transcript per 16 kHz mono float32 array; `prompt=None` means the model's default."""
        ...

    def answer(self, audios: list[np.ndarray], prompts: list[str]) -> list[str]:
        """One free-text reply per (audio, prompt) pair; only multiple-choice tasks call it."""
        ...


@dataclass
class _Outcome:
    output: str | None = None
    error: str | None = None
    seconds: float | None = None  # audio duration, once decoded


@dataclass(frozen=True)
class _Timing:
    audio_seconds: float
    processing_seconds: float


def _describe_error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _checked(outputs: Any, expected: int) -> list[str]:
    if (
        not isinstance(outputs, list)
        or len(outputs) != expected
        or not all(isinstance(o, str) for o in outputs)
    ):
        raise TypeError(f"the model must return a list of {expected} strings, got {outputs!r:.200}")
    return outputs


def _run(
    items: Sequence[Item],
    call: Callable[[list[np.ndarray], list[Item]], list[str]],
    batch_size: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[list[_Outcome], _Timing]:
    if batch_size < 1:
        raise ValueError(f"Batch size must be at least 1, got {batch_size}.")
    try:  # warm-up, untimed and discarded; a failure here shows up again in the timed loop
        call([load_audio(items[0].audio)], [items[0]])
    except Exception:
        pass
    outcomes = [_Outcome() for _ in items]
    audio_seconds = processing = 0.0
    for start in range(0, len(items), batch_size):
        batch = range(start, min(start + batch_size, len(items)))
        t0 = time.perf_counter()
        loaded: list[tuple[int, np.ndarray]] = []
        for k in batch:
            try:
                samples = load_audio(items[k].audio)
            except Exception as err:
                outcomes[k].error = _describe_error(err)
                continue
            outcomes[k].seconds = duration_seconds(samples)
            loaded.append((k, samples))
        if loaded:
            try:
                texts = _checked(
                    call([a for _, a in loaded], [items[k] for k, _ in loaded]), len(loaded)
                )
                for (k, _), text in zip(loaded, texts):
                    outcomes[k].output = text
            except Exception:
                for k, samples in loaded:  # isolate the item(s) that make the batch fail
                    try:
                        outcomes[k].output = _checked(call([samples], [items[k]]), 1)[0]
                    except Exception as err:
                        outcomes[k].error = _describe_error(err)
        processing += time.perf_counter() - t0
        audio_seconds += sum(outcomes[k].seconds for k in batch if outcomes[k].output is not None)
        if progress is not None:
            progress(batch.stop, len(items))
    return outcomes, _Timing(audio_seconds, processing)


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Where the numbers came from: versions, platform, CPU count, time (UTC)."""
    return {
        "python": platform.python_version(),
        "packages": {
            name: _package_version(name)
            for name in (
                "aero",
                "torch",
                "transformers",
                "numpy",
                "jiwer",
                "whisper-normalizer",
                "faster-whisper",
            )
        },
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, 2)


def _speed(timing: _Timing, batch_size: int) -> dict[str, Any]:
    rtfx = (
        timing.audio_seconds / timing.processing_seconds if timing.processing_seconds > 0 else None
    )
    return {
        "audio_seconds": round(timing.audio_seconds, 3),
        "processing_seconds": round(timing.processing_seconds, 3),
        "rtfx": None if rtfx is None else round(rtfx, 2),
        "batch_size": batch_size,
        "warmup": "one untimed call on the first item",
    }


def _model_info(transcriber: Any) -> dict[str, Any]:
    info = {"model": transcriber.name}
    parameters = getattr(transcriber, "parameters", None)
    # A torch module's `parameters` is a method, not a count; only record plain integers.
    info["parameters"] = parameters if isinstance(parameters, int) else None
    device = getattr(transcriber, "device", None)
    info["device"] = None if device is None else str(device)
    return info


def _write(output_dir: str | Path, results: dict[str, Any], samples: list[dict[str, Any]]) -> None:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with (output_dir / SAMPLES_NAME).open("w", encoding="utf-8") as out:
        for sample in samples:
            out.write(json.dumps(sample, ensure_ascii=False) + "\n")
    (output_dir / RESULTS_NAME).write_text(
        json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def _take(items: Iterable[Item], limit: int | None) -> list[Item]:
    if limit is not None and limit < 1:
        raise ValueError(f"Limit must be at least 1, got {limit}.")
    taken = list(itertools.islice(items, limit))
    if not taken:
        raise ValueError("The evaluation set is empty.")
    return taken


def _asr_sample(item: EvalItem, outcome, unit: Unit) -> tuple[dict[str, Any], Any]:
    """One item's line of samples.jsonl and its alignment (None for an item that failed)."""
    sample: dict[str, Any] = {"id": item.id, "reference": item.text, "duration": outcome.seconds}
    if outcome.output is None:
        return {**sample, "hypothesis": None, "error": outcome.error}, None
    ref_norm, hyp_norm = normalize(item.text), normalize(outcome.output)
    errors = align(ref_norm, hyp_norm, unit)
    sample.update(
        hypothesis=outcome.output,
        reference_normalized=ref_norm,
        hypothesis_normalized=hyp_norm,
        reference_length=errors.ref_len,
        substitutions=errors.substitutions,
        deletions=errors.deletions,
        insertions=errors.insertions,
        errors=errors.errors,
        empty_reference=errors.empty_ref,
        error=None,
    )
    return sample, errors


def run_asr_eval(
    transcriber: Transcriber,
    items: Iterable[EvalItem],
    batch_size: int = 8,
    limit: int | None = None,
    output_dir: str | Path = "eval-results",
    task_name: str = "asr",
    prompt: str | None = None,
    unit: Unit = "word",
    seed: int = 0,
    n_resamples: int = 1000,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Transcribe, score (corpus WER or CER), write both files; return the results dict."""
    items = _take(items, limit)
    outcomes, timing = _run(
        items, lambda audios, _: transcriber.transcribe(audios, prompt=prompt), batch_size, progress
    )

    samples, scored = [], []
    for item, outcome in zip(items, outcomes):
        sample, errors = _asr_sample(item, outcome, unit)
        samples.append(sample)
        if errors is not None:
            scored.append(errors)

    score = corpus_score(scored, unit)
    ci = bootstrap_ci(scored, n_resamples=n_resamples, seed=seed)
    metric = "wer" if unit == "word" else "cer"
    results = {
        **_model_info(transcriber),
        "task": task_name,
        "kind": "asr",
        "metric": metric,
        metric: score.error_rate,
        f"{metric}_percent": _percent(score.error_rate),
        "ci95": None if ci is None else [ci.low, ci.high],
        "ci95_percent": None if ci is None else [_percent(ci.low), _percent(ci.high)],
        "reason": score.reason,
        "protocol": PROTOCOL,
        "counts": {
            "items": len(items),
            "failed": sum(o.output is None for o in outcomes),
            "scored": score.n_scored,
            "empty_references": score.n_empty_refs,
            "empty_reference_insertions": score.empty_ref_insertions,
            f"reference_{unit}s": score.reference_units,
            "substitutions": score.substitutions,
            "deletions": score.deletions,
            "insertions": score.insertions,
            "hits": score.hits,
            "errors": score.errors,
        },
        "speed": _speed(timing, batch_size),
        "prompt": prompt,
        "limit": limit,
        "bootstrap": {"n_resamples": n_resamples, "seed": seed, "confidence": 0.95},
        "environment": environment(),
    }
    _write(output_dir, results, samples)
    return results


def run_choice_eval(
    transcriber: Transcriber,
    items: Iterable[ChoiceItem],
    batch_size: int = 8,
    limit: int | None = None,
    output_dir: str | Path = "eval-results",
    task_name: str = "choice",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Ask each question, parse the option letter, score accuracy overall and per category."""
    items = _take(items, limit)
    outcomes, timing = _run(
        items,
        lambda audios, batch: transcriber.answer(
            audios, [build_prompt(i.question, i.choices) for i in batch]
        ),
        batch_size,
        progress,
    )

    samples, answered, predicted = [], [], []
    for item, outcome in zip(items, outcomes):
        sample = {
            "id": item.id,
            "category": item.category,
            "question": item.question,
            "choices": list(item.choices),
            "answer": item.choices[item.answer],
            "answer_letter": chr(ord("A") + item.answer),
            "response": outcome.output,
        }
        if outcome.output is None:
            samples.append({**sample, "error": outcome.error})
            continue
        choice = parse_choice(outcome.output, item.choices)
        answered.append(item)
        predicted.append(choice)
        samples.append(
            {
                **sample,
                "predicted_letter": None if choice is None else chr(ord("A") + choice),
                "correct": choice == item.answer,
                "error": None,
            }
        )

    score = score_choices(predicted, answered)
    results = {
        **_model_info(transcriber),
        "task": task_name,
        "kind": "choice",
        "metric": "accuracy",
        "accuracy": score.accuracy,
        "accuracy_percent": _percent(score.accuracy),
        "reason": None if answered else "every item failed",
        "per_category": {
            name: {"n": c.n, "correct": c.correct, "accuracy_percent": _percent(c.accuracy)}
            for name, c in score.per_category.items()
        },
        "counts": {
            "items": len(items),
            "failed": len(items) - len(answered),
            "answered": score.n,
            "correct": score.correct,
            "unparsed": score.n_unparsed,
        },
        "speed": _speed(timing, batch_size),
        "limit": limit,
        "environment": environment(),
    }
    _write(output_dir, results, samples)
    return results
