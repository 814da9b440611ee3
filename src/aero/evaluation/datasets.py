"""Evaluation sets on local disk: LibriSpeech layout, JSONL manifests, HF `datasets` dirs.

Notable choices:
- Every source yields `EvalItem`s; `audio` is anything `aero.audio.load_audio` accepts (a path,
  a 16 kHz array, or a datasets-style `{"bytes"|"path": ...}` dict), so the runner decodes all
  of them the same way and a broken file fails one item, not the listing.
- LibriSpeech is sorted numerically by (speaker, chapter, utterance): the same order on every
  machine, and the utterance order the long-form builder concatenates in.
- Manifest errors name the file and the 1-based line, the way an editor shows it.
- `datasets` is imported lazily (optional dependency). Audio columns are read with
  `Audio(decode=False)` so decoding goes through our own loader instead of whatever backend
  the installed `datasets` version prefers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EvalItem:
    id: str
    audio: Any  # path (str), 16 kHz mono float32 array, or {"bytes"|"path": ...} dict
    text: str  # reference transcript, unnormalized
    duration: float | None = None  # seconds, when the source states it
    group: str | None = None  # long-form grouping key (LibriSpeech: "speaker-chapter")


class ManifestError(ValueError):
    """A manifest line that cannot be used; the message names the file and line."""


def _librispeech_key(utt_id: str) -> tuple:
    # IDs are "speaker-chapter-utterance"; numeric order keeps 19-198-0001 before 103-1240-0000
    # from sorting as strings differently on different tools.
    parts = utt_id.split("-")
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def librispeech_items(root: str | Path) -> list[EvalItem]:
    """`<root>/**/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt` + `<id>.flac` files."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"LibriSpeech directory {root} does not exist.")
    items = []
    for trans in root.rglob("*.trans.txt"):
        for lineno, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            if not text or utt_id.count("-") != 2:
                raise ManifestError(
                    f"{trans}:{lineno}: expected 'SPEAKER-CHAPTER-UTTERANCE TEXT', "
                    f"got {line.strip()!r}."
                )
            speaker, chapter = utt_id.split("-")[:2]
            items.append(
                EvalItem(
                    id=utt_id,
                    audio=str(trans.parent / f"{utt_id}.flac"),
                    text=text,
                    group=f"{speaker}-{chapter}",
                )
            )
    if not items:
        raise FileNotFoundError(f"No LibriSpeech transcripts (*.trans.txt) found under {root}.")
    return sorted(items, key=lambda item: _librispeech_key(item.id))


def _from_messages(record: dict, where: str) -> dict:
    """A training-format sample (the reference's `messages`) as an ASR item: its one audio and the
    assistant's text as the reference transcript."""
    audios, reply = [], []
    messages = record["messages"]
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for part in parts:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "audio_url":
                url = part["audio_url"]
                audios.append(url.get("url") if isinstance(url, dict) else url)
            elif kind == "audio":
                audios.append(part.get("audio"))
            elif kind == "text" and message.get("role") == "assistant":
                reply.append(part.get("text", ""))
    if len(audios) != 1 or not reply:
        raise ManifestError(
            f"{where}: a messages sample is scored as ASR only with one audio part "
            "and an assistant reply "
            f"(it has {len(audios)} audio parts and {len(reply)} assistant text parts)."
        )
    return {**record, "audio": audios[0], "text": "".join(reply)}


def _manifest_item(
    record: Any, base: Path, where: str, group_key: str | None, lineno: int
) -> EvalItem:
    if not isinstance(record, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    if "messages" in record and "audio" not in record:
        record = _from_messages(record, where)
    for field in ("audio", "text"):
        if not isinstance(record.get(field), str):
            raise ManifestError(
                f"{where}: field '{field}' must be a string (it is {record.get(field)!r})."
            )
    duration = record.get("duration")
    if duration is not None and (
        isinstance(duration, bool)
        or not isinstance(duration, (int, float))
        or not math.isfinite(duration)
    ):
        raise ManifestError(
            f"{where}: field 'duration' must be a number of seconds (it is {duration!r})."
        )
    group = None
    if group_key is not None:
        if record.get(group_key) is None:
            raise ManifestError(f"{where}: grouping field '{group_key}' is missing.")
        group = str(record[group_key])
    audio = Path(record["audio"])
    audio = audio if audio.is_absolute() else base / audio
    return EvalItem(
        id=str(record.get("id", f"line{lineno}")),
        audio=str(audio),
        text=record["text"],
        duration=None if duration is None else float(duration),
        group=group,
    )


def manifest_items(path: str | Path, group_key: str | None = None) -> list[EvalItem]:
    """JSONL with `audio` (relative to the manifest's folder, or absolute), `text`,
    optional `duration` (s) and `id`; `group_key` names a field to group long-form recordings by.
    Training-format lines (`messages` with one audio and an assistant reply) are read as well."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Manifest {path} does not exist.")
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{where}: not valid JSON ({err.msg}).") from None
        items.append(_manifest_item(record, path.parent, where, group_key, lineno))
    if not items:
        raise ManifestError(f"Manifest {path} has no items.")
    return items


def hf_items(
    source: str | Path,
    split: str | None = None,
    config: str | None = None,
    audio_column: str = "audio",
    text_column: str = "text",
    id_column: str | None = None,
) -> Iterator[EvalItem]:
    """A directory written by `save_to_disk`, or (when not a local path) a hub id for
    `load_dataset`."""
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "Reading a Hugging Face dataset needs the optional package `datasets`: "
            "pip install datasets"
        ) from None
    if Path(source).exists():
        ds = datasets.load_from_disk(str(source))
    else:
        ds = datasets.load_dataset(str(source), config, split=split)
    if isinstance(ds, datasets.DatasetDict):
        if split is None and len(ds) != 1:
            raise ValueError(f"Dataset {source} has splits {sorted(ds)}; choose one with --split.")
        if split is not None and split not in ds:
            raise ValueError(f"Dataset {source} has no split '{split}'; it has {sorted(ds)}.")
        ds = ds[split] if split is not None else next(iter(ds.values()))
    for column in (audio_column, text_column, id_column):
        if column is not None and column not in ds.column_names:
            raise ValueError(
                f"Dataset {source} has no column '{column}'; columns are {ds.column_names}."
            )
    # Checks above run at call time; rows are then produced lazily (a test set can be GBs).
    return _hf_rows(
        ds.cast_column(audio_column, datasets.Audio(decode=False)),
        audio_column,
        text_column,
        id_column,
    )


def _hf_rows(
    ds: Any, audio_column: str, text_column: str, id_column: str | None
) -> Iterator[EvalItem]:
    for index, row in enumerate(ds):
        yield EvalItem(
            id=str(row[id_column]) if id_column else str(index),
            audio=row[audio_column],
            text=row[text_column] or "",
        )
