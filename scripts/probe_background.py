"""Linear probe: do Whisper tiny.en's encoder features (aero-mini's audio tower) tell the
background sounds apart (none, white/pink/brown noise, music)?

Mean and standard deviation over time of the encoder's last hidden state, a logistic
regression fitted on the first N transcription/understanding clips of a training manifest,
scored on the background questions of a held-out understanding manifest (labels from how
the audio was made: the sample's noise or music effect).

    python scripts/probe_background.py data/aero-mini/train.jsonl \
        data/aero-mini-heldout/heldout-understanding.jsonl --train-clips 600
"""

import argparse
import os
import time

import numpy as np
import torch

from aero.audio import SAMPLE_RATE, load_audio
from aero.convert.whisper_ct2 import load_whisper_tiny_en
from aero.data.manifest import DatasetSpec, Sample, read_dataset, with_resolved_audio
from aero.processing import is_audio_part

CLASSES = ["none", "white", "pink", "brown", "music"]
FRAMES_PER_SECOND = 50  # Whisper's encoder output rate


def label(sample: Sample) -> int:
    for effect in sample.extra.get("meta", {}).get("effects", []):
        if effect["effect"] in ("noise", "music"):
            return CLASSES.index(effect["kind"])
    return CLASSES.index("none")


def audio_of(sample: Sample):
    user = next(m for m in with_resolved_audio(sample) if m["role"] == "user")
    return next(p["audio"] for p in user["content"] if is_audio_part(p))


def features(samples: list[Sample], model, processor) -> np.ndarray:
    """Per clip: mean and std over time of the encoder's output on the clip's real frames
    (first 30 s)."""
    encoder = model.model.encoder
    out = []
    for sample in samples:
        audio = load_audio(audio_of(sample))[: 30 * SAMPLE_RATE]
        x = processor.feature_extractor(
            audio, sampling_rate=SAMPLE_RATE, return_tensors="pt"
        ).input_features
        with torch.inference_mode():
            h = encoder(x).last_hidden_state[0]
        h = h[: max(1, int(len(audio) / SAMPLE_RATE * FRAMES_PER_SECOND))]
        out.append(torch.cat([h.mean(0), h.std(0)]).numpy())
    return np.stack(out)


def fit_and_score(Xtr, ytr, Xte, yte, weight_decay: float) -> None:
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    train = torch.tensor((Xtr - mu) / sd, dtype=torch.float64)
    test = torch.tensor((Xte - mu) / sd, dtype=torch.float64)
    torch.manual_seed(0)  # the layer's random start: with few clips per class it moves the result
    linear = torch.nn.Linear(Xtr.shape[1], len(CLASSES)).double()
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=500)
    target = torch.tensor(ytr)

    def closure():
        opt.zero_grad()
        loss = (
            torch.nn.functional.cross_entropy(linear(train), target)
            + weight_decay * linear.weight.pow(2).sum()
        )
        loss.backward()
        return loss

    opt.step(closure)
    pred = linear(test).argmax(1).numpy()
    per_class = {
        c: round(float((pred[yte == i] == i).mean()), 2)
        for i, c in enumerate(CLASSES)
        if (yte == i).any()
    }
    print(
        f"wd {weight_decay}: held-out accuracy {(pred == yte).mean():.3f} "
        "(always the commonest class: "
        f"{np.bincount(yte).max() / len(yte):.3f}); per class {per_class}; "
        f"train acc {(linear(train).argmax(1).numpy() == ytr).mean():.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train_manifest")
    parser.add_argument("heldout_manifest")
    parser.add_argument("--train-clips", type=int, default=600)
    parser.add_argument("--cache", help="an .npz file keeping the features between runs")
    args = parser.parse_args()
    torch.set_num_threads(2)

    train = [
        s
        for s in read_dataset(DatasetSpec(args.train_manifest))
        if s.extra.get("task") in ("transcribe", "understand")
    ][: args.train_clips]
    test = [
        s
        for s in read_dataset(DatasetSpec(args.heldout_manifest))
        if s.extra.get("meta", {}).get("question_kind") == "background"
    ]
    start = time.time()
    if args.cache and os.path.exists(args.cache):
        stored = np.load(args.cache)
        Xtr, Xte = stored["Xtr"], stored["Xte"]
    else:
        model, processor = load_whisper_tiny_en()
        Xtr, Xte = features(train, model, processor), features(test, model, processor)
        if args.cache:
            np.savez(args.cache, Xtr=Xtr, Xte=Xte)
    ytr, yte = np.array([label(s) for s in train]), np.array([label(s) for s in test])
    print(
        f"features in {time.time() - start:.0f}s; "
        f"train {len(ytr)} {np.bincount(ytr, minlength=len(CLASSES))}, "
        f"test {len(yte)} {np.bincount(yte, minlength=len(CLASSES))}"
    )
    for weight_decay in (1e-4, 1e-3, 1e-2):
        fit_and_score(Xtr, ytr, Xte, yte, weight_decay)


if __name__ == "__main__":
    main()
