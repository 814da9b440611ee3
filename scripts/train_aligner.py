"""Train the word aligner (a CTC head over a model's frozen encoder) for word timestamps.

    aero data synth data/aligner --recipe configs/data/aligner.yaml --seed 1 --workers 2
    python scripts/train_aligner.py data/aligner/train.jsonl runs/aligner --model aero-mini
    cp runs/aligner/aligner.safetensors src/aero/assets/aero-mini/   # ship it (aero-mini)

For a saved checkpoint, copy the file into the checkpoint directory instead.
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", help="Transcription manifest (reference message format).")
    parser.add_argument("out", help="Output folder: aligner.safetensors, metrics.jsonl.")
    parser.add_argument("--model", default="aero-mini", help="Whose encoder: a name or directory.")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kernel", type=int, default=1, help="Frames the head sees at once.")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from aero.models import load
    from aero.train.aligner import train_aligner

    model, processor = load(args.model)
    summary = train_aligner(
        model,
        processor,
        args.manifest,
        args.out,
        args.steps,
        args.batch_size,
        args.lr,
        kernel=args.kernel,
        seed=args.seed,
        model_name=args.model,
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
