"""Long-form sets: utterances of one group concatenated into one recording with one transcript.

Notable choices:
- LibriSpeech "long" follows the release's protocol: all utterances of a (speaker, chapter),
  in utterance order, become one recording; transcripts are joined with single spaces.
- Any manifest can be rebuilt the same way with a grouping field; members keep manifest order.
- Optional silence between utterances (`gap_seconds`) is exact zeros, so the recording's length
  is precisely the sum of its parts plus the gaps, which the manifest's `duration` states.
- Output is 16 kHz mono FLAC, 16-bit (LibriSpeech's own format, so nothing is lost), plus a
  JSONL manifest readable by `datasets.manifest_items`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import soundfile as sf

from aero.audio import SAMPLE_RATE, duration_seconds, load_audio

from .datasets import EvalItem, librispeech_items, manifest_items

MANIFEST_NAME = "manifest.jsonl"


def _file_stem(group: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", group)


def build_longform(
    items: Iterable[EvalItem], out_dir: str | Path, gap_seconds: float = 0.0
) -> Path:
    """Concatenate items per `group`; write `<out_dir>/audio/*.flac` and the manifest; return its
    path."""
    if gap_seconds < 0:
        raise ValueError(f"The silence gap must be zero or positive seconds, got {gap_seconds}.")
    groups: dict[str, list[EvalItem]] = {}
    for item in items:
        if item.group is None:
            raise ValueError(
                f"Item {item.id} has no group; long-form recordings need a grouping key."
            )
        groups.setdefault(item.group, []).append(item)
    if not groups:
        raise ValueError("No items to build long-form recordings from.")

    out_dir = Path(out_dir)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    gap = np.zeros(round(gap_seconds * SAMPLE_RATE), dtype=np.float32)
    manifest = out_dir / MANIFEST_NAME
    with manifest.open("w", encoding="utf-8") as out:
        for group, members in groups.items():
            parts: list[np.ndarray] = []
            for k, member in enumerate(members):
                if k:
                    parts.append(gap)
                parts.append(load_audio(member.audio))
            # 16-bit PCM saturates outside [-1, 1]; clip explicitly rather than let it wrap.
            samples = np.clip(np.concatenate(parts), -1.0, 1.0)
            rel = Path("audio") / f"{_file_stem(group)}.flac"
            sf.write(out_dir / rel, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            record = {
                "id": group,
                "audio": rel.as_posix(),
                "text": " ".join(m.text.strip() for m in members),
                "duration": duration_seconds(samples),
                "utterances": [m.id for m in members],
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return manifest


def build_librispeech_longform(
    root: str | Path, out_dir: str | Path, gap_seconds: float = 0.0
) -> Path:
    return build_longform(librispeech_items(root), out_dir, gap_seconds)


def build_manifest_longform(
    manifest: str | Path, group_key: str, out_dir: str | Path, gap_seconds: float = 0.0
) -> Path:
    return build_longform(manifest_items(manifest, group_key=group_key), out_dir, gap_seconds)


def build_longform_from(
    source: str | Path, out_dir: str | Path, gap_seconds: float = 0.0, group_key: str | None = None
) -> Path:
    """CLI entry: a LibriSpeech directory, or a JSONL manifest with `group_key`."""
    source = Path(source)
    if source.is_dir():
        return build_librispeech_longform(source, out_dir, gap_seconds)
    if group_key is None:
        raise ValueError(
            f"{source} is not a LibriSpeech directory; "
            "for a manifest, pass --group-key (the grouping field)."
        )
    return build_manifest_longform(source, group_key, out_dir, gap_seconds)
