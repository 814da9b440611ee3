"""Transcripts as files: txt, json, srt, vtt (also the server's response formats).

Notable choices:
- Cues come from `Result.segments` (one per 30 s window when transcribed with timestamps).
  A result without segments becomes ONE cue spanning the recording: a single generation
  over all windows does not say which window holds which words, so we do not guess.
- SRT uses `HH:MM:SS,mmm`, WebVTT `HH:MM:SS.mmm`; empty segments are skipped (a player shows
  nothing for them anyway), and cue numbers stay consecutive.
- JSON holds everything the Result knows, with seconds as floats rounded to milliseconds.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from aero.engine import Result, Segment

FORMATS = ("txt", "json", "srt", "vtt")


def cues(result: Result) -> list[Segment]:
    if result.segments:
        return [s for s in result.segments if s.text.strip()]
    return [Segment(0.0, result.duration, result.text)] if result.text.strip() else []


def timestamp(seconds: float, separator: str = ",") -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def to_txt(result: Result) -> str:
    return result.text + "\n"


def to_srt(result: Result) -> str:
    blocks = [
        f"{i}\n{timestamp(c.start)} --> {timestamp(c.end)}\n{c.text.strip()}\n"
        for i, c in enumerate(cues(result), 1)
    ]
    return "\n".join(blocks)


def to_vtt(result: Result) -> str:
    blocks = [
        f"{timestamp(c.start, '.')} --> {timestamp(c.end, '.')}\n{c.text.strip()}\n"
        for c in cues(result)
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_dict(result: Result) -> dict:
    ms = lambda x: round(float(x), 3)
    return {
        "text": result.text,
        "duration": ms(result.duration),
        "finish_reason": result.finish_reason,
        "stopped_by_repetition": result.stopped_by_repetition,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "audios": [
            {"duration": ms(a.duration), "windows": [[ms(s), ms(e)] for s, e in a.windows]}
            for a in result.audios
        ],
        "segments": [
            {**asdict(s), "start": ms(s.start), "end": ms(s.end)} for s in result.segments
        ],
        "warnings": result.warnings,
    }


def to_json(result: Result) -> str:
    return json.dumps(to_dict(result), ensure_ascii=False, indent=2) + "\n"


WRITERS = {"txt": to_txt, "json": to_json, "srt": to_srt, "vtt": to_vtt}


def render(result: Result, fmt: str) -> str:
    if fmt not in WRITERS:
        raise ValueError(f"Unknown output format {fmt!r}; use one of {', '.join(FORMATS)}.")
    return WRITERS[fmt](result)


AUDIO_EXTENSIONS = {
    ".wav",
    ".flac",
    ".mp3",
    ".m4a",
    ".aac",
    ".ogg",
    ".oga",
    ".opus",
    ".webm",
    ".mp4",
    ".mkv",
    ".mov",
    ".wma",
    ".aiff",
    ".aif",
}


def collect_audio_files(paths: list[str | os.PathLike]) -> list[Path]:
    """Files as given (any extension: the decoder decides) plus audio files found in directories,
    recursively."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS
            )
        else:
            out.append(
                p
            )  # a missing file is reported by the decoder, with the rest still transcribed
    return out


def output_paths(files: list[Path], output_dir: Path, fmt: str) -> list[Path]:
    """`<output_dir>/<stem>.<fmt>` per input; stems seen before get `-1`, `-2`, ... (no
    overwriting)."""
    seen: dict[str, int] = {}
    out = []
    for f in files:
        n = seen.get(f.stem, 0)
        seen[f.stem] = n + 1
        out.append(output_dir / (f"{f.stem}.{fmt}" if n == 0 else f"{f.stem}-{n}.{fmt}"))
    return out


def write_result(result: Result, path: Path, fmt: str) -> None:
    """Write atomically: a crash never leaves a half-written transcript behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(render(result, fmt), encoding="utf-8")
    os.replace(tmp, path)
