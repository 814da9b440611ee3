"""Training manifests: the reference message format, read from JSONL, parquet or a `datasets` dir.

One sample is `{"messages": [{"role": ..., "content": [parts...]}, ...]}` where audio parts are
`{"type": "audio_url", "audio_url": {"url": "rel/path.wav"}}` (or `{"type": "audio", "audio":
"rel/path.wav"}`) relative to the dataset's data root.

Notable choices:
- Audio paths are resolved against the data root and must stay inside it: a path that
  escapes it (`../`, an absolute path elsewhere, a symlink out) is refused, so a manifest
  cannot make the trainer read arbitrary files.
- A mixture is several datasets with weights; a weight is a repetition factor per epoch
  (2.0 = every sample twice, 0.5 = a seeded random half), so proportions are exact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from aero.processing import is_audio_part


class ManifestError(ValueError):
    """A manifest or data-root problem the user must fix; the message names the file."""


@dataclass
class DatasetSpec:
    path: str  # a .jsonl / .json / .parquet file, or a `datasets.save_to_disk` directory
    root: str | None = None  # audio paths are relative to this (default: the manifest's folder)
    weight: float = 1.0
    name: str | None = None
    tasks: list[str] | None = None  # only the rows whose `task` is one of these (None: all rows)

    def data_root(self) -> Path:
        p = Path(self.path)
        return Path(self.root) if self.root else (p if p.is_dir() else p.parent)


@dataclass
class Sample:
    messages: list[dict]
    root: Path
    source: str  # "file:line" for error messages
    extra: dict = field(default_factory=dict)


def _rows(path: Path) -> Iterator[tuple[str, dict]]:
    if not path.exists():
        raise ManifestError(f"Manifest {path} does not exist.")
    if path.is_dir():
        try:
            from datasets import load_from_disk
        except ImportError:
            raise ManifestError(
                f"{path} is a directory: "
                "reading a `datasets` directory needs `pip install datasets`."
            )
        ds = load_from_disk(str(path))
        for i, row in enumerate(ds):
            yield f"{path}[{i}]", row
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}[{i}]", row
    elif path.suffix == ".json":
        rows = json.loads(path.read_text())
        if not isinstance(rows, list):
            raise ManifestError(f"{path} must hold a JSON list of samples.")
        for i, row in enumerate(rows):
            yield f"{path}[{i}]", row
    else:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{n}", json.loads(line)
                except json.JSONDecodeError as err:
                    raise ManifestError(f"{path}:{n} is not valid JSON ({err.msg}).") from None


def _messages(row: dict, where: str) -> list[dict]:
    messages = row.get("messages") if isinstance(row, dict) else None
    if isinstance(messages, str):
        messages = json.loads(messages)  # parquet/datasets often store nested data as text
    if not isinstance(messages, list) or not messages:
        raise ManifestError(f"{where} has no 'messages' list.")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ManifestError(f"{where}: every message needs 'role' and 'content'.")
    if not any(m["role"] == "assistant" for m in messages):
        raise ManifestError(f"{where} has no assistant message to learn from.")
    # Columnar formats (parquet, `datasets`) give every content part every field, unused ones
    # as None; drop those so a text part does not look like an audio part.
    return [
        {**m, "content": [{k: v for k, v in p.items() if v is not None} for p in m["content"]]}
        if isinstance(m["content"], list)
        else m
        for m in messages
    ]


def _extra(row: dict) -> dict:
    """The row's `id` and `task` strings and its `meta` dict (e.g. an evaluation label)."""
    extra = {k: row[k] for k in ("id", "task") if isinstance(row.get(k), str)}
    if isinstance(row.get("meta"), dict):
        extra["meta"] = row["meta"]
    return extra


def read_dataset(spec: DatasetSpec) -> list[Sample]:
    root = spec.data_root()
    return [
        Sample(_messages(row, where), root, where, _extra(row))
        for where, row in _rows(Path(spec.path))
    ]


def resolve_audio_path(url: str, root: Path) -> Path:
    """`url` inside `root`, or ManifestError if it escapes the data root."""
    real_root = Path(os.path.realpath(root))
    target = Path(os.path.realpath(real_root / url))
    if target != real_root and real_root not in target.parents:
        raise ManifestError(
            f"Audio path {url!r} escapes the data root {real_root}; refusing to read it."
        )
    return target


def audio_paths(sample: Sample) -> list[Path]:
    """The audio files of a sample, in order, each checked to lie inside its data root."""
    paths = []
    for message in sample.messages:
        content = message["content"]
        if not isinstance(content, list):
            continue
        for part in content:
            if not is_audio_part(part):
                continue
            if "audio_url" in part:
                url = (
                    part["audio_url"]["url"]
                    if isinstance(part["audio_url"], dict)
                    else part["audio_url"]
                )
            else:
                url = part.get("audio")
            if not isinstance(url, str):
                raise ManifestError(f"{sample.source}: training audio must be a path string.")
            paths.append(resolve_audio_path(url, sample.root))
    return paths


def with_resolved_audio(sample: Sample) -> list[dict]:
    """The sample's messages with audio parts pointing at checked absolute paths."""
    paths = iter(audio_paths(sample))
    out = []
    for message in sample.messages:
        content = message["content"]
        if isinstance(content, list):
            content = [
                {"type": "audio", "audio": str(next(paths))} if is_audio_part(p) else p
                for p in content
            ]
        out.append({**message, "content": content})
    return out
