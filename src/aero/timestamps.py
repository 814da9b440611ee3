"""Word timestamps: a CTC aligner over the audio encoder and forced alignment of a transcript.

Notable choices:
- Aero's LM emits no times. A small head over the frozen encoder's frames (25 per second,
  40 ms each) predicts characters with a CTC loss; forcing a transcript's characters through
  those posteriors (Viterbi over the CTC topology) gives every character a frame span, and
  every word the span of its letters. The transcript comes from the user (`aero align`) or
  from the model's own reply (`--word-timestamps`): the words are the reply's words.
- Characters, not LM tokens: 28 classes (letters, apostrophe, space), the same for any LM and
  any tokenizer, and a word boundary is a space the aligner has to place.
- Long recordings: the encoder runs window by window (as for the LM) and the frames are
  concatenated, so a 10-minute recording (15,000 frames) is aligned in one pass and a word
  spoken across a window boundary is placed like any other.
- A word with no letter the aligner knows (a number written in digits, a symbol) is placed in
  the gap between its neighbours, so every word has a time and the times never go backwards.
- The head is a per-encoder file, `aligner.safetensors`, beside a checkpoint (aero-mini ships
  one; `scripts/train_aligner.py` trains one for any encoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

ALPHABET = " abcdefghijklmnopqrstuvwxyz'"  # class k + 1 is ALPHABET[k]; class 0 is the CTC blank
FRAME_SECONDS = 0.04  # one encoder output frame after pooling: 25 per second
ALIGNER_FILE = "aligner.safetensors"


@dataclass
class Word:
    start: float  # seconds from the start of the recording
    end: float  # seconds; end > start, and a word ends at or before the next one starts
    text: str  # the word as written in the transcript (punctuation kept)
    probability: float = 1.0  # mean posterior of its letters on the aligned path (0 if unplaced)


class CtcAligner(nn.Module):
    """(T, D) or (T, B, D) encoder frames -> (T, [B,] 29) log-probabilities over blank + ALPHABET.

    A convolution over `kernel` neighbouring frames, GELU, then a linear layer to the classes.
    aero-mini's ships with kernel 1 (each frame alone): kernel 5 (200 ms of context) lowered the
    held-out character error rate (28.0% -> 26.8%) but not the timing error (docs/benchmarks.md).
    """

    def __init__(self, d_model: int, hidden: int = 256, kernel: int = 1):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(d_model, hidden, kernel, padding=kernel // 2)
        self.out = nn.Linear(hidden, len(ALPHABET) + 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames if frames.dim() == 3 else frames[:, None]  # T, B, D
        h = self.conv(x.permute(1, 2, 0)).permute(2, 0, 1)  # B, D, T -> T, B, H
        y = self.out(nn.functional.gelu(h)).log_softmax(-1)
        return y if frames.dim() == 3 else y[:, 0]


def letters(word: str) -> str:
    """The characters of `word` the aligner knows, lowercased (curly apostrophes straightened)."""
    return "".join(c for c in word.lower().replace("\u2019", "'") if c in ALPHABET[1:])


def transcript_targets(text: str) -> tuple[list[str], list[int], list[tuple[int, int]]]:
    """Words of `text`, the target classes (words' letters joined by spaces), and each word's
    [first, last) target span (empty for a word without letters)."""
    words = text.split()
    targets: list[int] = []
    spans = []
    for word in words:
        chars = letters(word)
        if chars and targets:
            targets.append(1)  # the space before a word (class of " ")
        start = len(targets)
        targets += [ALPHABET.index(c) + 1 for c in chars]
        spans.append((start, len(targets)))
    return words, targets, spans


def min_frames(targets: list[int]) -> int:
    """Frames CTC needs for `targets`: one per letter, plus a blank between two equal letters."""
    return len(targets) + sum(a == b for a, b in zip(targets, targets[1:]))


def forced_align(log_probs: np.ndarray, targets: list[int]) -> np.ndarray:
    """Viterbi path of `targets` through (T, C) CTC log-probabilities: for each target, the
    first and last frame it occupies, as a (len(targets), 2) array. Raises if T is too short."""
    T = log_probs.shape[0]
    ext = np.zeros(2 * len(targets) + 1, dtype=np.int64)  # blank, t1, blank, t2, ..., blank
    ext[1::2] = targets
    S = len(ext)
    need = min_frames(targets)
    if T < need:
        raise ValueError(
            f"The audio is too short for its transcript: {T} frames for {need} letters."
        )
    skip = np.zeros(S, dtype=bool)  # s may come from s - 2: a letter after a different letter
    skip[3::2] = ext[3::2] != ext[1:-2:2]
    score = np.full(S, -np.inf)
    score[:2] = log_probs[0, ext[:2]]
    back = np.zeros((T, S), dtype=np.int8)  # 0: stay, 1: from s - 1, 2: from s - 2
    for t in range(1, T):
        stay, step = score, np.concatenate([[-np.inf], score[:-1]])
        jump = np.where(skip, np.concatenate([[-np.inf, -np.inf], score[:-2]]), -np.inf)
        best = np.stack([stay, step, jump])
        back[t] = best.argmax(0)
        score = best.max(0) + log_probs[t, ext]
    s = S - 1 if S == 1 or score[-1] >= score[-2] else S - 2
    spans = np.full((len(targets), 2), -1, dtype=np.int64)
    for t in range(T - 1, -1, -1):
        if s % 2 == 1:
            k = s // 2
            spans[k, 0] = t
            if spans[k, 1] < 0:
                spans[k, 1] = t
        s -= int(back[t, s])
    return spans


def word_times(
    words: list[str],
    spans: list[tuple[int, int]],
    char_frames: np.ndarray,
    char_probs: np.ndarray,
    duration: float,
) -> list[Word]:
    """Words with times from their letters' frames; words without letters fill the gaps."""
    out = []
    for word, (a, b) in zip(words, spans):
        if b > a:
            start = char_frames[a, 0] * FRAME_SECONDS
            end = min((char_frames[b - 1, 1] + 1) * FRAME_SECONDS, duration)
            out.append(Word(float(start), float(end), word, float(char_probs[a:b].mean())))
        else:
            out.append(Word(-1.0, -1.0, word, 0.0))
    _fill_gaps(out, duration)
    return out


def _fill_gaps(words: list[Word], duration: float) -> None:
    """Place unplaced words (start < 0) evenly in the gap between their placed neighbours."""
    i = 0
    while i < len(words):
        if words[i].start >= 0:
            i += 1
            continue
        j = i
        while j < len(words) and words[j].start < 0:
            j += 1
        lo = words[i - 1].end if i > 0 else 0.0
        hi = words[j].start if j < len(words) else duration
        need = (j - i) * FRAME_SECONDS  # no room between the neighbours: take half of theirs
        if hi - lo < need and i > 0:
            prev = words[i - 1]
            prev.end = lo = max((prev.start + prev.end) / 2, hi - need)
        if hi - lo < need and j < len(words):
            nxt = words[j]
            nxt.start = hi = min((nxt.start + nxt.end) / 2, lo + need)
        step = max(hi - lo, 0.0) / (j - i)
        for k in range(i, j):
            words[k].start, words[k].end = lo + (k - i) * step, lo + (k - i + 1) * step
        i = j


class WordAligner:
    """Word timestamps for one Aero model: its encoder, and a CtcAligner trained for it."""

    def __init__(self, model, processor, head: CtcAligner):
        self.model, self.processor, self.head = model, processor, head.eval()

    @classmethod
    def from_file(cls, model, processor, path: str | Path) -> WordAligner:
        from safetensors.torch import load_file

        if not Path(path).is_file():
            raise FileNotFoundError(
                f"No word aligner at {path}: this model has no {ALIGNER_FILE}; train one with "
                "scripts/train_aligner.py."
            )
        weights = load_file(str(path))
        hidden, d_model, kernel = weights["conv.weight"].shape
        if d_model != model.config.audio_config.d_model:
            raise ValueError(
                f"The word aligner at {path} is for an encoder of width {d_model}, not "
                f"{model.config.audio_config.d_model}: it belongs to another model."
            )
        head = CtcAligner(d_model, hidden, kernel)
        head.load_state_dict(weights)
        return cls(model, processor, head)

    @torch.inference_mode()
    def encoder_frames(self, samples: np.ndarray) -> torch.Tensor:
        """(T, D) encoder frames of a whole recording (windows encoded and concatenated)."""
        from aero.audio import split_windows

        windows = [w for w in split_windows(samples) if len(w)]
        device = next(self.model.parameters()).device
        values, mask = self.processor.audio_features(windows)
        encoded = self.model.encode_windows(values.to(device), mask.to(device))
        return torch.cat(encoded).float()

    @torch.inference_mode()
    def log_probs(self, samples: np.ndarray) -> np.ndarray:
        frames = self.encoder_frames(samples)
        return self.head.to(frames.device)(frames).cpu().numpy()

    def align(self, samples: np.ndarray, transcript: str) -> list[Word]:
        """Times of every word of `transcript` in 16 kHz `samples`."""
        from aero.audio import duration_seconds

        words, targets, spans = transcript_targets(transcript)
        duration = duration_seconds(samples)
        if not words:
            return []
        if not targets:
            return word_times(words, spans, np.zeros((0, 2), np.int64), np.zeros(0), duration)
        log_probs = self.log_probs(samples)
        frames = forced_align(log_probs, targets)
        probs = np.exp(
            np.array([log_probs[f[0] : f[1] + 1, c].max() for f, c in zip(frames, targets)])
        )
        return word_times(words, spans, frames, probs, duration)
