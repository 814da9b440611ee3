"""Free-answer tasks from chat manifests: spoken instructions and audio understanding.

Items come from the training-format manifests (`messages`: a user turn with one audio and a
text prompt, an assistant reference). Two judges, both stated in every results file:
- `exact`: the reply equals the reference after the Whisper normalizer (short answers such as
  "Fast." / "two speakers" / "female"), reported per category (`meta.question_kind`);
- `agreement` (open answers): exact match, first-sentence match and SQuAD-style token F1 of the
  reply against the reference, which for distilled instruction data is the text LLM's own
  answer to the written question. No model judge: the figures are reproducible bit for bit.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .datasets import EvalItem
from .normalize import normalize
from .runner import _model_info, _percent, _run, _speed, _take, _write, environment


@dataclass(frozen=True)
class AnswerItem:
    id: str
    audio: Any  # an absolute path
    prompt: str
    reference: str
    category: str | None = None


def chat_manifest_items(path: str | Path, limit: int | None = None) -> list[AnswerItem]:
    """One item per row (the first `limit` rows) of a chat manifest with one audio, a prompt and
    an assistant reply; audio paths are resolved (and confined) like training data."""
    from aero.data.manifest import DatasetSpec, read_dataset, with_resolved_audio
    from aero.processing import content_text, is_audio_part

    items = []
    for sample in read_dataset(DatasetSpec(str(path)))[:limit]:
        messages = with_resolved_audio(sample)
        user = next(m for m in messages if m["role"] == "user")
        audio = [
            p["audio"]
            for p in user["content"]
            if isinstance(user["content"], list) and is_audio_part(p)
        ]
        if len(audio) != 1:
            raise ValueError(
                f"{sample.source}: expected one audio in the user turn, found {len(audio)}."
            )
        reference = content_text(next(m for m in messages if m["role"] == "assistant")["content"])
        items.append(
            AnswerItem(
                id=sample.extra.get("id", sample.source),
                audio=audio[0],
                prompt=content_text(user["content"]).strip(),
                reference=reference.strip(),
                category=sample.extra.get("meta", {}).get("question_kind")
                or sample.extra.get("task"),
            )
        )
    return items


def as_asr_items(items: Iterable[AnswerItem]) -> list[EvalItem]:
    """Transcription rows as ASR items (the reference is the transcript)."""
    return [EvalItem(id=i.id, audio=i.audio, text=i.reference) for i in items]


def token_f1(reference: str, hypothesis: str) -> float:
    ref, hyp = normalize(reference).split(), normalize(hypothesis).split()
    if not ref or not hyp:
        return float(ref == hyp)
    common = sum((Counter(ref) & Counter(hyp)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(hyp), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]


def run_answer_eval(
    transcriber: Any,
    items: Iterable[AnswerItem],
    judge: str = "exact",
    batch_size: int = 8,
    limit: int | None = None,
    output_dir: str | Path = "eval-results",
    task_name: str = "answers",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Ask each item's prompt about its audio; score with `judge` (exact | agreement)."""
    if judge not in ("exact", "agreement"):
        raise ValueError(f"judge must be exact or agreement, not {judge!r}.")
    items = _take(items, limit)
    outcomes, timing = _run(
        items,
        lambda audios, batch: transcriber.answer(audios, [i.prompt for i in batch]),
        batch_size,
        progress,
    )
    samples, per_category = [], defaultdict(lambda: [0, 0])
    exact = first = 0
    f1s = []
    for item, outcome in zip(items, outcomes):
        sample = {
            "id": item.id,
            "category": item.category,
            "prompt": item.prompt,
            "reference": item.reference,
            "response": outcome.output,
            "error": outcome.error,
        }
        if outcome.output is not None:
            hit = normalize(outcome.output) == normalize(item.reference)
            exact += hit
            per_category[item.category][0] += 1
            per_category[item.category][1] += hit
            sample["exact"] = hit
            if judge == "agreement":
                sample["first_sentence"] = normalize(first_sentence(outcome.output)) == normalize(
                    first_sentence(item.reference)
                )
                sample["token_f1"] = token_f1(item.reference, outcome.output)
                first += sample["first_sentence"]
                f1s.append(sample["token_f1"])
        samples.append(sample)
    answered = sum(o.output is not None for o in outcomes)
    results = {
        **_model_info(transcriber),
        "task": task_name,
        "kind": "answers",
        "judge": judge,
        "metric": "accuracy" if judge == "exact" else "agreement",
        "exact_percent": _percent(exact / answered) if answered else None,
        "counts": {
            "items": len(items),
            "failed": len(items) - answered,
            "answered": answered,
            "exact": exact,
        },
        "per_category": {
            str(k): {"n": n, "correct": c, "accuracy_percent": _percent(c / n)}
            for k, (n, c) in sorted(per_category.items(), key=str)
        },
        "speed": _speed(timing, batch_size),
        "environment": environment(),
    }
    if judge == "agreement":
        results["first_sentence_percent"] = _percent(first / answered) if answered else None
        results["token_f1_percent"] = _percent(sum(f1s) / len(f1s)) if f1s else None
    if judge == "exact":
        results["accuracy_percent"] = results["exact_percent"]
    _write(output_dir, results, samples)
    return results
