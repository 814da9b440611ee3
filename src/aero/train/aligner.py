"""Training the word aligner: a CTC head over a frozen encoder, predicting characters.

Notable choices:
- The encoder is frozen, so every clip's frames are computed once, kept in memory (7 h of
  audio at 25 frames/s and width 384 is ~1 GB) and saved to OUT/frames.pt for reruns; an
  epoch then costs only the head.
- Transcription samples only (one audio, a text reply), the same selection as the CTC stage;
  targets are the reply's letters with single spaces between words (`transcript_targets`).
- The last `val_clips` clips are held out; greedy CTC decoding of them gives a character error
  rate every `eval_every` steps, written to `metrics.jsonl` with the loss.
- The head is saved as `aligner.safetensors` with its lineage (steps, clips, hours, data) in the
  file's metadata.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from torch import nn

from aero.audio import load_audio
from aero.data.manifest import DatasetSpec, read_dataset
from aero.timestamps import (
    ALPHABET,
    FRAME_SECONDS,
    CtcAligner,
    WordAligner,
    min_frames,
    transcript_targets,
)
from aero.train.align import transcription_pair
from aero.train.logs import JsonlLog
from aero.train.schedule import cosine_schedule


def encode_clips(aligner: WordAligner, pairs: list[tuple[str, str]], log_every: int = 500):
    """(frames (T, D), targets) of every clip whose transcript fits its frames."""
    data = []
    for i, (path, text) in enumerate(pairs):
        targets = transcript_targets(text)[1]
        frames = aligner.encoder_frames(load_audio(path)).clone()  # a normal tensor: autograd-safe
        if targets and min_frames(targets) <= frames.shape[0]:
            data.append((frames, torch.tensor(targets)))
        if log_every and (i + 1) % log_every == 0:
            print(f"encoded {i + 1}/{len(pairs)} clips", flush=True)
    return data


def ctc_batch_loss(head: CtcAligner, batch) -> torch.Tensor:
    frames = nn.utils.rnn.pad_sequence([f for f, _ in batch])  # T, B, D
    log_probs = head(frames)
    lengths = torch.tensor([f.shape[0] for f, _ in batch])
    targets = torch.cat([t for _, t in batch])
    target_lengths = torch.tensor([len(t) for _, t in batch])
    return nn.functional.ctc_loss(
        log_probs, targets, lengths, target_lengths, blank=0, reduction="mean", zero_infinity=True
    )


def greedy_text(log_probs: torch.Tensor) -> str:
    best = log_probs.argmax(-1).tolist()
    out = [c for i, c in enumerate(best) if c and (i == 0 or c != best[i - 1])]
    return " ".join("".join(ALPHABET[c - 1] for c in out).split())


def char_error_rate(head: CtcAligner, data) -> float:
    import jiwer

    with torch.no_grad():
        hyps = [greedy_text(head(f)) for f, _ in data]
    refs = ["".join(ALPHABET[c - 1] for c in t.tolist()) for _, t in data]
    return float(jiwer.cer(refs, hyps))


def train_aligner(
    model,
    processor,
    manifest: str | Path,
    out: str | Path,
    steps: int = 3000,
    batch_size: int = 32,
    lr: float = 2e-3,
    hidden: int = 256,
    kernel: int = 1,
    val_clips: int = 200,  # held out from the end of the manifest (at most a tenth of it)
    eval_every: int = 500,
    seed: int = 0,
    model_name: str = "",
) -> dict:
    """Train a CtcAligner for `model`'s encoder on a transcription manifest; writes
    OUT/aligner.safetensors and OUT/metrics.jsonl, returns a summary."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    rng = random.Random(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = read_dataset(DatasetSpec(str(manifest)))
    pairs = [p for p in map(transcription_pair, samples) if p]
    head = CtcAligner(model.config.audio_config.d_model, hidden, kernel)
    started = time.perf_counter()
    cache = out / "frames.pt"  # the frozen encoder's frames: a rerun (other head, steps) skips them
    if cache.is_file():
        data = torch.load(cache)
    else:
        data = encode_clips(WordAligner(model.eval(), processor, head), pairs)
        torch.save(data, cache)
    val_clips = min(val_clips, len(data) // 10 or 1)
    train, val = data[:-val_clips], data[-val_clips:]
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    schedule = cosine_schedule(optimizer, warmup=max(1, steps // 20), total=steps, min_ratio=0.05)
    metrics = JsonlLog(out / "metrics.jsonl")
    head.train()
    for step in range(1, steps + 1):
        loss = ctc_batch_loss(head, rng.sample(train, min(batch_size, len(train))))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        record = {"step": step, "loss": float(loss.detach())}
        if step % eval_every == 0 or step == steps:
            head.eval()
            record["val_cer"] = char_error_rate(head, val)
            head.train()
            print(json.dumps(record), flush=True)
        metrics.write([record])
    hours = sum(f.shape[0] for f, _ in data) * FRAME_SECONDS / 3600
    lineage = {"steps": steps, "clips": len(train), "hours": f"{hours:.2f}", "data": str(manifest)}
    lineage.update(seed=seed, val_cer=f"{record['val_cer']:.4f}", encoder=model_name, kernel=kernel)
    path = out / "aligner.safetensors"
    save_file(head.state_dict(), str(path), {k: str(v) for k, v in lineage.items()})
    return {**lineage, "seconds": time.perf_counter() - started, "path": str(path)}
