"""Padded fixed-size batches vs token-budget batches vs packing, side by side in one run.

    python benchmarks/packing.py [--samples 96] [--seed 0]

A synthetic manifest with a long-tailed duration mix (85% of clips 2-20 s, 15% 30-300 s,
transcripts of ~2.5 words/s) is trained for one epoch in each mode, each in its own process
(so peak RSS is per mode), with the same tiny random model (Whisper-tiny-shaped encoder,
frozen; a 4-layer LM trained in full):
  padded : fixed batches of --batch-size samples, LM rows padded to the longest, encoder
           windows padded to 30 s — the reference's behaviour;
  budget : dynamic batch size (padded LM tokens <= --budget), encoder at real length;
  packed : first-fit-decreasing bins of --budget tokens, one row per bin, encoder at real length.
Printed: real (non-pad) LM tokens per second, LM and encoder padding, peak RSS, and ratios
to the padded baseline.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def make_data(root: Path, n: int, seed: int) -> Path:
    import numpy as np
    import soundfile as sf

    rng = random.Random(seed)
    words = (
        "the a of and to in is was that for on with as by at from this have speech audio model"
    ).split()
    lines = []
    (root / "audio").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        seconds = rng.uniform(2, 20) if rng.random() < 0.85 else rng.uniform(30, 300)
        x = np.random.default_rng(i).standard_normal(int(seconds * 16000)).astype(np.float32) * 0.05
        sf.write(root / "audio" / f"{i}.wav", x, 16000, subtype="PCM_16")
        text = " ".join(rng.choice(words) for _ in range(max(1, int(seconds * 2.5))))
        lines.append(
            json.dumps(
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "audio_url", "audio_url": {"url": f"audio/{i}.wav"}},
                                {"type": "text", "text": "Please transcribe the audio"},
                            ],
                        },
                        {"role": "assistant", "content": [{"type": "text", "text": text}]},
                    ]
                }
            )
        )
    path = root / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_model(path: Path) -> None:
    import torch

    from aero.modeling import AeroForConditionalGeneration
    from conftest import make_tiny_processor, tiny_config

    torch.manual_seed(0)
    config = tiny_config(
        audio=dict(
            d_model=384,
            encoder_layers=4,
            encoder_attention_heads=6,
            encoder_ffn_dim=1536,
            num_mel_bins=80,
        ),
        text=dict(
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
    )
    AeroForConditionalGeneration(config).save_pretrained(path)
    from transformers import WhisperFeatureExtractor

    processor = make_tiny_processor(system_prompt=None)
    processor.feature_extractor = WhisperFeatureExtractor(feature_size=80)
    processor.save_pretrained(path)


MODES = {
    "padded": dict(batching="fixed", pad_audio_to_30s=True),
    "budget": dict(batching="budget"),
    "packed": dict(batching="pack"),
}


def run_mode(mode: str, model: str, manifest: str, out: str, budget: int, batch_size: int) -> dict:
    from aero.data.batching import BatchPlan
    from aero.data.lengths import cached_lengths
    from aero.data.manifest import DatasetSpec, read_dataset
    from aero.processing import AeroProcessor
    from aero.train.config import TrainConfig, apply_overrides
    from aero.train.run import train

    settings = dict(
        model=model,
        output_dir=out,
        data=[{"path": manifest}],
        preset="full",
        lr=1e-4,
        pack_length=budget,
        token_budget=budget,
        batch_size=batch_size,
        save_every=10**6,
        progress=False,
        **MODES[mode],
    )
    cfg = apply_overrides(TrainConfig(), settings)
    samples = read_dataset(DatasetSpec(manifest))
    lengths, _, _ = cached_lengths(manifest, samples, AeroProcessor.from_pretrained(model))
    plan = BatchPlan(lengths, cfg.batching, cfg.batch_size_or_budget, seed=cfg.seed)
    cfg.max_steps = len(plan.epoch_batches(0))  # exactly one epoch: every sample once
    train(cfg)
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    rows = rows[1:]  # the first step includes one-off warm-up costs
    tokens = sum(r["tokens"] for r in rows)
    seconds = sum(r["step_s"] for r in rows)
    return {
        "mode": mode,
        "steps": cfg.max_steps,
        "real_tokens_per_s": tokens / seconds,
        "lm_padding": 1 - tokens / sum(r["tokens"] / (1 - r["padding"]) for r in rows),
        "encoder_padding": sum(r.get("audio_padding", 0) for r in rows) / len(rows),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "samples": sum(r["samples"] for r in rows),
        "seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=96)
    ap.add_argument("--budget", type=int, default=8192, help="token budget / pack length")
    ap.add_argument(
        "--batch-size", type=int, default=8, help="fixed batch size of the padded baseline"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=list(MODES), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.mode:  # child process: one mode, prints one JSON line
        work = Path(args.work)
        print(
            json.dumps(
                run_mode(
                    args.mode,
                    str(work / "model"),
                    str(work / "data" / "train.jsonl"),
                    str(work / f"run-{args.mode}"),
                    args.budget,
                    args.batch_size,
                )
            )
        )
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_data(work / "data", args.samples, args.seed)
        make_model(work / "model")
        results = []
        for mode in MODES:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--mode",
                    mode,
                    "--work",
                    str(work),
                    "--budget",
                    str(args.budget),
                    "--batch-size",
                    str(args.batch_size),
                ],
                capture_output=True,
                text=True,
                check=True,
                env={**__import__("os").environ, "AERO_CACHE": tmp},
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = results[0]
    print(
        f"{args.samples} samples, budget/pack length {args.budget}, "
        f"padded batch size {args.batch_size}"
    )
    print(
        f"{'mode':8} {'steps':>5} {'real tok/s':>11} {'LM padding':>10} {'enc padding':>11} "
        f"{'peak RSS MB':>11} "
        f"{'x padded':>9}"
    )
    for r in results:
        print(
            f"{r['mode']:8} {r['steps']:5d} {r['real_tokens_per_s']:11.0f} {r['lm_padding']:10.1%} "
            f"{r['encoder_padding']:11.1%} "
            f"{r['peak_rss_mb']:11.0f} {r['real_tokens_per_s'] / base['real_tokens_per_s']:9.2f}"
        )


if __name__ == "__main__":
    main()
