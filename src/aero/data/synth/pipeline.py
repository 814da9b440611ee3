"""`synthesize`: plan every sample of a recipe, get the LLM's answers, render in parallel, write
manifests.

Notable choices:
- Planning is sequential in the main process from one `random.Random` per split (seeded
  from the seed and split name), so a seed fixes every manifest line and every audio sample
  whatever the number of workers; a larger --samples keeps the first samples unchanged.
- Tasks are assigned by smooth weighted round robin, so every prefix of a split holds the
  recipe's mix as exactly as integers allow (the trainer shuffles anyway).
- Sentences and questions are dealt from shuffled decks, so a split repeats none until it
  has used them all (held-out sets hold distinct sentences and questions).
- Manifest rows are the reference message format plus `id`, `task` and `meta` (voices,
  effects, labels, duration), which the trainer ignores.
"""

from __future__ import annotations

import json
import os
import random
import time
import warnings
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from aero.data.synth import augment, tasks
from aero.data.synth.llm import AnswerCache, AnswerFn
from aero.data.synth.questions import questions
from aero.data.synth.recipes import Recipe, Split
from aero.data.synth.render import Job, render_job
from aero.data.synth.text import Sentence, SentencePool
from aero.data.synth.voices import voice_set

MAX_FAST_WORDS_PER_SECOND = 4.2  # espeak at its fastest rate here (230 wpm) plus margin


class Deck:
    """Items dealt in a shuffled order; reshuffled when used up."""

    def __init__(self, items: list, rng: random.Random):
        self.items, self.rng, self.order = list(items), rng, []

    def deal(self):
        if not self.order:
            self.order = list(range(len(self.items)))
            self.rng.shuffle(self.order)
        return self.items[self.order.pop()]


class Sentences:
    def __init__(self, split: Split, rng: random.Random):
        pool = SentencePool(split.heldout_text, split.generated_share)
        self.rng, self.share, self.heldout = rng, split.generated_share, split.heldout_text
        self.fortunes = Deck(pool.fortunes, rng) if pool.fortunes else None
        self.pool = pool

    def draw(self) -> Sentence:
        if self.fortunes is not None and self.rng.random() >= self.share:
            return self.fortunes.deal()
        return self.pool.draw(random.Random(self.rng.random()))  # a generated one on this side


def plan_split(split: Split, seed: int, samples: int | None = None) -> list[Job]:
    rng = random.Random(f"aero-synth:{seed}:{split.name}")
    voices = voice_set(split.voices)
    genders = {v.gender for v in voices}
    if (
        split.mix.get("understand", 0) > 0
        and "gender" in split.understand_kinds
        and len(genders) < 2
    ):
        # the data stays as planned (a recipe must regenerate the same set); the user is told
        warnings.warn(
            f"split {split.name}: every voice of set {split.voices!r} is {genders.pop()}, "
            "so its gender questions all have one answer and teach a model to give it always; "
            "mix this split with gender-balanced data or leave gender out of understand_kinds",
            stacklevel=2,
        )
    sentences = Sentences(split, rng)
    question_deck = Deck(questions(split.heldout_text), rng)
    task_names = [t for t in split.mix if split.mix[t] > 0]
    weights = [split.mix[t] for t in task_names]
    unknown = set(task_names) - set(tasks.TASKS)
    if unknown:
        raise ValueError(
            f"split {split.name}: unknown tasks {sorted(unknown)}; known: {', '.join(tasks.TASKS)}"
        )
    jobs, counts = [], {t: 0 for t in task_names}
    total = sum(weights)
    for i in range(split.samples if samples is None else samples):
        # the task furthest behind its share: exact proportions at every prefix, no randomness
        task = max(task_names, key=lambda t: split.mix[t] / total * (i + 1) - counts[t])
        counts[task] += 1
        if task == "transcribe":
            job = tasks.transcribe(rng, voices, sentences.draw(), split.augment)
        elif task == "instruct":
            job = tasks.instruct(rng, voices, question_deck.deal(), split.augment)
        elif task == "understand":
            job = tasks.understand(
                rng,
                voices,
                [sentences.draw(), sentences.draw()],
                split.augment,
                split.understand_kinds,
            )
        else:
            seconds = round(rng.uniform(*split.long_seconds), 1)
            chosen, words = [], 0
            while words < seconds * MAX_FAST_WORDS_PER_SECOND or len(chosen) < 2:
                chosen.append(sentences.draw())
                words += len(chosen[-1].say.split())
            job = tasks.long(rng, voices, chosen, seconds, split.augment)
        if split.voice_shift:  # its own stream: the split's other draws stay as without it
            cents = random.Random(f"aero-synth:{seed}:{split.name}:shift:{i}").randint(
                *split.voice_shift
            )
            job.effects.insert(0, {"effect": "pitch", "cents": cents})
        if split.channel:  # its own stream too
            channel_rng = random.Random(f"aero-synth:{seed}:{split.name}:channel:{i}")
            if channel_rng.random() < split.channel and job.task != "understand":
                job.effects = augment.plan_channel(channel_rng, job.effects)
        job.id = f"{split.name}-{i:06d}"
        job.audio = f"audio/{job.id}.flac"
        jobs.append(job)
    return jobs


def _render_all(jobs: list[Job], root: Path, workers: int, progress: bool) -> dict[str, dict]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    results: dict[str, dict] = {}
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("synth", total=len(jobs))
        if workers <= 1:
            for job in jobs:
                results[job.id] = render_job(job, str(root))
                bar.advance(task)
        else:
            # spawn: the parent may hold torch threads (the LLM), which do not survive fork
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(render_job, job, str(root)) for job in jobs]
                for fut in as_completed(futures):
                    r = fut.result()
                    results[r["id"]] = r
                    bar.advance(task)
    return results


def _row(job: Job, result: dict) -> dict:
    used = job.speeches[: result["used"]]
    speakers: list[dict] = []
    for s in used:
        d = s.describe()
        if d not in speakers:
            speakers.append(d)
    transcript = " ".join(job.texts[: result["used"]])
    answer = transcript if job.task == "long" else job.answer
    meta = {
        **job.meta,
        "duration": result["duration"],
        "speakers": speakers,
        "effects": job.effects,
        "transcript": transcript,
        "sources": job.meta["sources"][: result["used"]],
    }
    if job.task == "long":
        meta["utterances"] = result["used"]
    return {
        "id": job.id,
        "task": job.task,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "audio_url", "audio_url": {"url": job.audio}},
                    {"type": "text", "text": job.prompt},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "meta": meta,
    }


def _check_tools(recipe: Recipe, jobs: list[Job]) -> None:
    """One clear error before any rendering: a neural voice's missing package, or a codec this
    PyAV build lacks (it would fail every clip planned with it: PyAV 18.1 dropped AMR-NB, 7.8% of
    session 12's clips)."""
    for neural in {
        (v.engine, v.name)
        for s in recipe.splits
        for v in voice_set(s.voices)
        if v.engine in ("kokoro", "piper")
    }:
        from aero.data.synth.neural import check

        check(*neural)
    augment.check_codecs({e["codec"] for j in jobs for e in j.effects if e["effect"] == "codec"})


def synthesize(
    out: str | os.PathLike,
    recipe: Recipe,
    seed: int = 0,
    samples: int | None = None,
    workers: int = 1,
    answer_fn: AnswerFn | None = None,
    answers_cache: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict[str, dict]:
    """Write OUT/audio/*.flac and OUT/<split>.jsonl for every split of the recipe.

    answer_fn answers written questions (default: SmolLM2-135M-Instruct, loaded only if a
    split has instruction samples); answers are cached in `answers_cache` (default
    OUT/llm_answers.json). Returns {"splits": {name: {samples, seconds, manifest}}, "clips",
    "plan_llm_seconds", "render_seconds"}.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    plans = {s.name: plan_split(s, seed, samples) for s in recipe.splits}
    all_jobs = [j for jobs in plans.values() for j in jobs]
    _check_tools(recipe, all_jobs)

    asked = [j.meta["question"] for j in all_jobs if j.task == "instruct"]
    if asked:
        if answer_fn is None:
            from aero.data.synth.llm import smollm2_answers

            answer_fn = smollm2_answers()
        answers = AnswerCache(answers_cache or root / "llm_answers.json").fill(
            list(dict.fromkeys(asked)), answer_fn
        )
        for j in all_jobs:
            if j.task == "instruct":
                j.answer = answers[j.meta["question"]]

    llm_done = time.perf_counter()
    results = _render_all(all_jobs, root, workers, progress)
    rendered = time.perf_counter()
    summary = {}
    for name, jobs in plans.items():
        path = root / f"{name}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        ok = [j for j in jobs if "error" not in results[j.id]]
        failed = [results[j.id] for j in jobs if "error" in results[j.id]]
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(
                json.dumps(_row(job, results[job.id]), ensure_ascii=False, sort_keys=False) + "\n"
                for job in ok
            )
        os.replace(tmp, path)
        failures = root / f"{name}.failed.jsonl"
        if failed:
            failures.write_text("".join(json.dumps(r) + "\n" for r in failed))
        elif failures.exists():
            failures.unlink()
        # how the manifest was made, for the lineage of what is trained on it
        record = {"recipe": recipe.name, "split": name, "seed": seed, "samples": len(jobs)}
        path.with_suffix(".synth.json").write_text(json.dumps(record) + "\n")
        summary[name] = {
            "samples": len(ok),
            "failed": len(failed),
            "seconds": round(sum(results[j.id]["duration"] for j in ok), 1),
            "manifest": str(path),
        }
    return {
        "splits": summary,
        "clips": len(all_jobs),
        "plan_llm_seconds": round(llm_done - start, 2),
        "render_seconds": round(rendered - llm_done, 2),
    }


def iter_rows(path: str | os.PathLike) -> Iterable[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)
