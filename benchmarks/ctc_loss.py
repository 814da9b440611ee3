"""The connector stage's CTC loss (forward + backward), before and after session 3's rewrite, side
by side in one run, on a batch shaped like aero-mini v2's: frames at 12.5/s from clips of 2-8 s
and 1-2 minute recordings, a head over 16,000 SmolLM2 tokens of width 576.

    python benchmarks/ctc_loss.py [--seconds 300] [--long 1] [--repeats 3] [--connector]

- before: each recording's full (T, S + 1) logits, log-softmax, its targets' columns gathered,
  every recording padded to the batch's longest and widest, one batched `ctc_loss` (float32);
- after: `aero.train.align.ctc_batch_loss`: the batch's frames against the table in chunks (the
  log-sum-exp with its own backward), each recording's CTC over its own columns; float32 and
  bf16.

Prints seconds per call and the ratio, and checks that the losses agree.

With --connector, the 4-layer connector that makes those frames (forward + backward under bf16
autocast, as the stage runs it) on 8 minutes of 2-8 s clips, one 30 s window each: one call per
recording (before session 10), one call for the whole batch (each window padded to the longest),
and one call per group of similar lengths (`CtcConnector.frames`, `aero.audio.length_groups`).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from types import SimpleNamespace

import torch
from torch import nn

from aero.connector import CtcConnector
from aero.train.align import CTCHead, ctc_batch_loss

RATE = 12.5  # frames per second of audio (Whisper's 25/s, two stacked)
TOKENS_PER_SECOND = 3.5  # SmolLM2 tokens of a transcript per second of speech


def batch(seconds: float, long: int, vocab: int, hidden: int, seed: int = 0):
    rng = random.Random(seed)
    lengths = [int(rng.uniform(60, 120) * RATE) for _ in range(long)]
    while sum(lengths) < seconds * RATE:
        lengths.append(int(rng.uniform(2, 8) * RATE))
    frames = [torch.randn(n, hidden) * 0.05 for n in lengths]
    targets = [
        [rng.randrange(vocab) for _ in range(int(n / RATE * TOKENS_PER_SECOND))] for n in lengths
    ]
    return frames, targets


def before(head: CTCHead, projected, targets) -> torch.Tensor:
    """The loss as it was: full logits per recording, everything padded to the batch's extent."""
    lengths = torch.tensor([p.shape[0] for p in projected])
    logits = [head(p) for p in projected]
    uniques = [list(dict.fromkeys(ids)) for ids in targets]
    columns = [torch.tensor([head.blank_index] + u) for u in uniques]
    width = max(len(c) for c in columns)
    log_probs = nn.utils.rnn.pad_sequence(
        [
            nn.functional.pad(l.log_softmax(-1)[:, c], (0, width - len(c)), value=-1e4)
            for l, c in zip(logits, columns)
        ]
    )
    flat = torch.tensor([u.index(t) + 1 for ids, u in zip(targets, uniques) for t in ids])
    target_lengths = torch.tensor([len(ids) for ids in targets])
    total = int(target_lengths.sum())
    ctc = nn.functional.ctc_loss(
        log_probs, flat, lengths, target_lengths, blank=0, reduction="sum", zero_infinity=True
    )
    valid = (torch.arange(log_probs.shape[0])[:, None] < lengths[None, :])[..., None]
    spurious = (log_probs.detach().exp() * log_probs * valid).sum()
    return (ctc - (spurious - spurious.detach())) / total


def timed(fn, frames, repeats: int) -> tuple[float, float]:
    runs, value = [], 0.0
    for _ in range(repeats):
        inputs = [f.clone().requires_grad_(True) for f in frames]
        start = time.perf_counter()
        loss = fn(inputs)
        loss.backward()
        runs.append(time.perf_counter() - start)
        value = float(loss.detach())
    return statistics.median(runs), value


def connector_calls(hidden: int, repeats: int, seconds: float = 480) -> None:
    """Per-recording connector calls against one call for the batch's windows."""
    config = SimpleNamespace(
        ctc_emissions="mix",
        text_config=SimpleNamespace(hidden_size=hidden, vocab_size=16),
        audio_config=SimpleNamespace(d_model=384),
        projector_stack=2,
        connector_layers=4,
    )
    connector = CtcConnector(config)
    rng = random.Random(0)
    lengths = []
    while sum(lengths) < seconds * RATE:
        lengths.append(int(rng.uniform(2, 8) * RATE))
    windows = [torch.randn(n, 2 * 384) for n in lengths]

    def per_recording(x):
        return torch.cat([torch.cat(connector.frames([w])) for w in x])

    def one_call(x):  # every window padded to the batch's longest
        return torch.cat(connector._frames(x))

    def grouped(x):  # `CtcConnector.frames`: windows of similar length together
        return torch.cat(connector.frames(x))

    def run(fn):
        def call(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = fn(x)
            return out.float().pow(2).mean()

        return call

    print(f"connector: {len(windows)} clips, {sum(lengths)} frames ({seconds:.0f} s), 4 layers")
    results = {
        "per recording": timed(run(per_recording), windows, repeats),
        "one call": timed(run(one_call), windows, repeats),
        "length groups": timed(run(grouped), windows, repeats),
    }
    base = results["per recording"][0]
    for name, (took, value) in results.items():
        print(f"{name:18s} {took:7.2f} s  x{base / took:5.2f}  value {value:.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=300, help="audio per batch")
    parser.add_argument("--long", type=int, default=1, help="long recordings in the batch")
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connector", action="store_true", help="time the connector calls")
    args = parser.parse_args()
    if args.connector:
        connector_calls(args.hidden, args.repeats)
        return
    torch.manual_seed(0)
    head = CTCHead(torch.randn(args.vocab, args.hidden))
    frames, targets = batch(args.seconds, args.long, args.vocab, args.hidden)
    n = sum(f.shape[0] for f in frames)
    print(
        f"batch: {len(frames)} recordings, {n} frames ({n / RATE:.0f} s), "
        f"head {args.vocab} x {args.hidden}"
    )
    results = {
        "before (float32)": timed(lambda x: before(head, x, targets), frames, args.repeats),
        "after (float32)": timed(
            lambda x: ctc_batch_loss(head, x, targets)[0], frames, args.repeats
        ),
        "after (bf16)": timed(
            lambda x: ctc_batch_loss(head, x, targets, torch.bfloat16)[0], frames, args.repeats
        ),
    }
    base = results["before (float32)"][0]
    for name, (seconds, value) in results.items():
        print(f"{name:18s} {seconds:7.2f} s  x{base / seconds:5.1f}  loss {value:.4f}")


if __name__ == "__main__":
    main()
