"""Transcripts as files: txt, json, srt, vtt (also the server's response formats).

Notable choices:
- Cues follow the words when the result has word timestamps (`Result.words`, from the
  aligner): `word_cues` groups them into cues of at most 7 s and 2 lines of 42 characters
  (the usual broadcast limits). A pause of 0.5 s or more always ends a cue; otherwise a cue
  ends at a sentence end (a word ending in . ! ? or an ellipsis, maybe followed by closing
  quotes or brackets): sentences are packed into a cue while they fit, and a sentence that
  fits in one cue is never split. A sentence too long for one cue is cut into as few cues
  as possible, as even as possible in length, preferring cuts after a comma, semicolon,
  colon or dash and at short gaps. Lines break at word boundaries, one line when the text
  fits on one, else as few lines as possible of balanced length (preferring a break after
  punctuation). Words are never split nor dropped: a word longer than a line gets a cue of
  its own. A cue starts at its first word's start and ends at its last word's end.
- Without words, cues come from `Result.segments` (one per 30 s window when transcribed
  with timestamps). A result without segments becomes ONE cue spanning the recording: a
  single generation over all windows does not say which window holds which words, so we
  do not guess.
- SRT uses `HH:MM:SS,mmm`, WebVTT `HH:MM:SS.mmm`; empty segments are skipped (a player shows
  nothing for them anyway), and cue numbers stay consecutive. A cue's lines are joined by
  newlines (both formats allow multi-line cue text).
- JSON holds everything the Result knows, with seconds as floats rounded to milliseconds;
  words are `{"start", "end", "word", "probability"}` (`word` as in OpenAI's verbose_json).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from pathlib import Path

from aero.engine import Result, Segment
from aero.timestamps import Word

FORMATS = ("txt", "json", "srt", "vtt")


PAUSE_SECONDS = 0.5  # a gap between words at least this long always ends a cue
_EPS = 1e-6  # seconds of float slack on the time limits
_CLOSERS = "\"'\u201d\u2019\u00bb)\\]}"  # closing quotes and brackets after the punctuation
_SENTENCE_END = re.compile(f"[.!?\u2026][{_CLOSERS}]*$")
_CLAUSE_END = re.compile(f"[,;:\u2013\u2014-][{_CLOSERS}]*$")
_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "jr.", "sr.", "vs.", "e.g.", "i.e."}


def is_sentence_end(word: str) -> bool:
    """A word ending in . ! ? or an ellipsis, maybe followed by closing quotes or brackets (not
    a title like "Mr." nor an initial like "J.")."""
    w = word.strip().lower()
    return bool(_SENTENCE_END.search(w)) and w not in _ABBREVIATIONS and not re.match(r"^\w\.$", w)


def _ends_clause(word: str) -> bool:
    return is_sentence_end(word) or bool(_CLAUSE_END.search(word.strip()))


def _line_count(sizes: list[int], max_chars: int) -> int | None:
    """Fewest lines of at most `max_chars` that hold words of these sizes (filling each line in
    turn is optimal); None when a word alone is longer than a line."""
    lines, width = 0, 0
    for n in sizes:
        if n > max_chars:
            return None
        if lines and width + 1 + n <= max_chars:
            width += 1 + n
        else:
            lines, width = lines + 1, n
    return lines


def wrap(texts: list[str], max_chars: int = 42) -> list[str]:
    """Words as lines of at most `max_chars`: as few lines as the words allow, of balanced length
    (least sum of squared lengths), a break after punctuation preferred. A word longer than a
    line stays whole, on a line of its own."""
    sizes = [len(t) for t in texts]
    count = _line_count(sizes, max_chars)
    if count is None:
        return list(texts)
    if count <= 1:
        return [" ".join(texts)]
    n, bonus = len(texts), (max_chars // 3) ** 2
    best: list[dict[int, tuple[int, int]]] = [{0: (0, 0)}] + [{} for _ in range(count)]
    for line in range(1, count + 1):  # best[line][j]: (cost, start of the line) for words[:j]
        for j, (cost, _) in best[line - 1].items():
            width = -1
            for k in range(j + 1, n + 1):
                width += sizes[k - 1] + 1
                if width > max_chars:
                    break
                c = cost + width**2 - (bonus if k < n and _ends_clause(texts[k - 1]) else 0)
                if k not in best[line] or c < best[line][k][0]:
                    best[line][k] = (c, j)
    lines, j = [], n
    for line in range(count, 0, -1):
        i = best[line][j][1]
        lines.append(" ".join(texts[i:j]))
        j = i
    return lines[::-1]


class _CueWords:
    """The words of one `word_cues` call with its limits: which runs fit in one cue, and how to
    cut a run that does not."""

    def __init__(self, words: list[Word], max_seconds: float, max_lines: int, max_chars: int):
        self.words, self.texts = words, [w.text.strip() for w in words]
        self.sizes = [len(t) for t in self.texts]
        self.max_seconds, self.max_lines, self.max_chars = max_seconds, max_lines, max_chars

    def fits(self, i: int, j: int) -> bool:
        """Whether words[i:j] fit in one cue (a single word always does)."""
        if j - i == 1:
            return True
        if self.words[j - 1].end - self.words[i].start > self.max_seconds + _EPS:
            return False
        lines = _line_count(self.sizes[i:j], self.max_chars)
        return lines is not None and lines <= self.max_lines

    def cut_bonus(self, k: int, pause: float) -> float:
        """How welcome a cut after word k is: after a comma-like mark, and at a gap."""
        bonus = self.max_chars**2 / 2
        gap = self.words[k + 1].start - self.words[k].end
        return bonus * (_ends_clause(self.texts[k]) + min(max(gap, 0.0) / pause, 1.0))

    def split(self, a: int, b: int, pause: float) -> list[tuple[int, int]]:
        """words[a:b] (too long for one cue) as the fewest cues, of even length in characters,
        cut where `cut_bonus` likes. Dynamic programming over the cut points; a cue holds a
        bounded number of words, so this is linear in b - a."""
        best: dict[int, tuple[int, float, int]] = {a: (0, 0.0, a)}
        for j in range(a + 1, b + 1):
            options = []
            for i in range(j - 1, a - 1, -1):
                if not self.fits(i, j):  # fitting is monotone: a longer run does not fit either
                    break
                n, cost, _ = best[i]
                width = sum(self.sizes[i:j]) + j - i - 1
                cost += width**2 - (self.cut_bonus(j - 1, pause) if j < b else 0.0)
                options.append((n + 1, cost, i))
            best[j] = min(options, key=lambda o: o[:2])
        spans, j = [], b
        while j > a:
            i = best[j][2]
            spans.append((i, j))
            j = i
        return spans[::-1]

    def cue(self, i: int, j: int) -> Segment:
        end = self.words[j - 1].end
        if j < len(self.words):  # words that overlap (against the aligner's promise) stay apart
            end = min(end, self.words[j].start)
        start = self.words[i].start
        return Segment(start, max(start, end), "\n".join(wrap(self.texts[i:j], self.max_chars)))


def _sentences(words: list[Word], pause: float):
    """(first, end, after_pause) of each run of words cut after a sentence end and at pauses;
    after_pause says the run starts the recording or follows a pause."""
    first, after_pause = 0, True
    for k, w in enumerate(words):
        last = k + 1 == len(words)
        paused = not last and words[k + 1].start - w.end >= pause - _EPS
        if last or paused or is_sentence_end(w.text):
            yield first, k + 1, after_pause
            first, after_pause = k + 1, paused


def word_cues(
    words: list[Word],
    max_seconds: float = 7.0,
    max_lines: int = 2,
    max_chars: int = 42,
    pause: float = PAUSE_SECONDS,
) -> list[Segment]:
    """Subtitle cues that follow the speech (rules in the module docstring): every word (with
    text) in exactly one cue, in order; cues do not overlap."""
    words = [w for w in words if w.text.strip()]
    cw = _CueWords(words, max_seconds, max_lines, max_chars)
    spans: list[tuple[int, int]] = []
    open_cue: tuple[int, int] | None = None  # a cue the next sentence may join
    for a, b, after_pause in _sentences(words, pause):
        if open_cue and not after_pause and cw.fits(open_cue[0], b):
            open_cue = (open_cue[0], b)
            continue
        if open_cue:
            spans.append(open_cue)
        open_cue = (a, b) if cw.fits(a, b) else None
        if open_cue is None:
            spans += cw.split(a, b, pause)
    if open_cue:
        spans.append(open_cue)
    return [cw.cue(i, j) for i, j in spans]


def cues(result: Result) -> list[Segment]:
    """Subtitle cues: from the words when there are any, else from the segments, else one cue
    for the whole recording."""
    if result.words:
        return word_cues(result.words)
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
        "words": [
            {
                "start": ms(w.start),
                "end": ms(w.end),
                "word": w.text,
                "probability": round(float(w.probability), 3),
            }
            for w in result.words
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
