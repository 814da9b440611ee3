"""Multiple-choice audio tasks (MMAU, AIR-Bench foundation): items, prompt, answer parser, accuracy.

Notable choices:
- The prompt is the harness's: question, one "A. option" line per choice, then
  "Answer with the option's letter from the given choices directly."
- Items accept both field spellings in the wild: MMAU (`choices`, `answer` as option text,
  `audio_id`, `task`) and AIR-Bench (`choice_a`..., `answer_gt`, `path`, `task_name`).
  An answer that equals an option's text wins over reading it as a letter, because both
  datasets store the text (and options such as musical keys can be letters themselves).
- The parser works for any number of options (up to Z) and tries, in order: a bare letter
  ("B", "(B)", "b."), the exact option text, a leading "B." / "(B)", an "answer is C" /
  "answer: d" phrase, a single option text inside the reply, a single bracketed letter.
  A lowercase letter only counts in an answer phrase when it stands alone ("answer: d"),
  so "the answer is a dog" is not read as option A. No letter found -> None, scored wrong.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INSTRUCTION = "Answer with the option's letter from the given choices directly."
LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class ChoiceItem:
    id: str
    audio: Any  # path or anything aero.audio.load_audio accepts
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices
    category: str | None = None


@dataclass(frozen=True)
class CategoryScore:
    n: int
    correct: int
    accuracy: float


@dataclass(frozen=True)
class ChoiceScore:
    n: int
    correct: int
    accuracy: float | None  # fraction; None when there were no items
    n_unparsed: int  # replies with no recognisable option (scored as wrong)
    per_category: dict[str, CategoryScore] = field(default_factory=dict)


def build_prompt(question: str, choices: Sequence[str]) -> str:
    if not 2 <= len(choices) <= len(LETTERS):
        raise ValueError(
            f"A multiple-choice question needs 2 to {len(LETTERS)} options, got {len(choices)}."
        )
    options = [f"{LETTERS[k]}. {str(c).strip()}" for k, c in enumerate(choices)]
    return "\n".join([question.strip(), *options, INSTRUCTION])


def _fold(text: str) -> str:
    """Lowercase, punctuation to spaces, single spaces: for comparing option texts."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _index(letter: str, n: int) -> int | None:
    k = ord(letter.upper()) - ord("A")
    return k if 0 <= k < n else None


_BARE = re.compile(r"[(\[]?([A-Za-z])[)\]]?[.:)]?")
_LEADING = re.compile(r"(?:[(\[]([A-Za-z])[)\]]|([A-Z])(?:[.:)](?=\s|$)|$))")
_PHRASE = re.compile(
    r"\b(answer|option|choice)\b(?:\s+is)?\s*[:\-]?\s*([(\[])?([A-Za-z])(?![A-Za-z])([)\]])?(.?)",
    re.IGNORECASE,
)
_BRACKETED = re.compile(r"(?<![A-Za-z])[(\[]([A-Z])[)\]]")


def parse_choice(response: str, choices: Sequence[str]) -> int | None:
    """The option index a model's reply picks, or None when it names none."""
    n = len(choices)
    text = response.strip()
    if not text:
        return None
    if m := _BARE.fullmatch(text):
        return _index(m[1], n)
    folded = _fold(text)
    for k, choice in enumerate(choices):
        if _fold(str(choice)) == folded:
            return k
    if (m := _LEADING.match(text)) and (k := _index(m[1] or m[2], n)) is not None:
        return k
    # "answer ..." phrases are stronger evidence than "option ..." mentions, so they go first.
    phrases = sorted(_PHRASE.finditer(text), key=lambda m: m[1].lower() != "answer")
    for m in phrases:
        _, opening, letter, closing, after = m.groups()
        standalone = bool(opening or closing) or after == "" or after in ".,;:!?"
        if (letter.isupper() or standalone) and (k := _index(letter, n)) is not None:
            return k
    mentioned = [
        k
        for k, c in enumerate(choices)
        if _fold(str(c)) and re.search(rf"\b{re.escape(_fold(str(c)))}\b", folded)
    ]
    # "hot dog" also contains "dog": keep only options not contained in another mentioned one.
    mentioned = [
        k
        for k in mentioned
        if not any(k != j and _fold(str(choices[k])) in _fold(str(choices[j])) for j in mentioned)
    ]
    if len(mentioned) == 1:
        return mentioned[0]
    bracketed = {k for m in _BRACKETED.finditer(text) if (k := _index(m[1], n)) is not None}
    if len(bracketed) == 1:
        return bracketed.pop()
    return None


def _answer_index(answer: Any, choices: Sequence[str], where: str) -> int:
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(
            f"{where}: 'answer' must be an option's letter or its text (it is {answer!r})."
        )
    for k, choice in enumerate(choices):
        if str(choice).strip().lower() == answer.strip().lower():
            return k
    m = _BARE.fullmatch(answer.strip())
    if m and (k := _index(m[1], len(choices))) is not None:
        return k
    raise ValueError(
        f"{where}: answer {answer!r} is neither an option letter "
        f"nor one of the options {list(choices)}."
    )


def _first(record: dict, *names: str) -> Any:
    return next((record[name] for name in names if record.get(name) is not None), None)


def _choice_item(record: Any, base: Path, where: str, index: int) -> ChoiceItem:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    choices = record.get("choices")
    if choices is None:  # AIR-Bench spells options as choice_a, choice_b, ...
        choices = [
            record[f"choice_{c}"]
            for c in "abcdefghijklmnopqrstuvwxyz"
            if record.get(f"choice_{c}") is not None
        ]
    if not isinstance(choices, list) or len(choices) < 2:
        raise ValueError(f"{where}: needs a 'choices' list with at least two options.")
    question = _first(record, "question")
    audio = _first(record, "audio", "audio_path", "audio_id", "path")
    if not isinstance(question, str) or not isinstance(audio, str):
        raise ValueError(
            f"{where}: needs a string 'question' and an audio path ('audio', 'audio_id' or 'path')."
        )
    audio_path = Path(audio)
    category = _first(record, "category", "task_name", "task")
    return ChoiceItem(
        id=str(_first(record, "id", "uniq_id") or index),
        audio=str(audio_path if audio_path.is_absolute() else base / audio_path),
        question=question,
        choices=tuple(str(c) for c in choices),
        answer=_answer_index(_first(record, "answer", "answer_gt"), choices, where),
        category=None if category is None else str(category),
    )


def load_choice_items(path: str | Path) -> list[ChoiceItem]:
    """A JSON list or JSONL file of questions; audio paths are relative to the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Multiple-choice file {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append((f"{path}:{lineno}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg}).") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}).") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of questions.")
        records = [(f"{path} item {k}", r) for k, r in enumerate(data)]
    if not records:
        raise ValueError(f"Multiple-choice file {path} has no questions.")
    return [_choice_item(r, path.parent, where, k) for k, (where, r) in enumerate(records)]


def score_choices(predicted: Sequence[int | None], items: Sequence[ChoiceItem]) -> ChoiceScore:
    if len(predicted) != len(items):
        raise ValueError(f"Got {len(predicted)} predictions for {len(items)} questions.")
    hits = [p == item.answer for p, item in zip(predicted, items)]
    by_cat: dict[str, list[bool]] = {}
    for hit, item in zip(hits, items):
        by_cat.setdefault(item.category or "all", []).append(hit)
    return ChoiceScore(
        n=len(items),
        correct=sum(hits),
        accuracy=sum(hits) / len(items) if items else None,
        n_unparsed=sum(p is None for p in predicted),
        per_category={
            c: CategoryScore(len(h), sum(h), sum(h) / len(h)) for c, h in sorted(by_cat.items())
        },
    )
