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
import json
import os
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

torch.set_num_threads(2)
from aero.convert.whisper_ct2 import load_whisper_tiny_en
CLASSES = ["none", "white", "pink", "brown", "music"]
def label(meta):
    for e in meta.get("effects", []):
        if e["effect"] in ("noise", "music"):
            return e["kind"]
    return "none"
model, proc = load_whisper_tiny_en()
enc = model.model.encoder.eval()
def feats(manifest, rows):
    root = Path(manifest).parent
    out = []
    for r in rows:
        a, sr = sf.read(f"{root}/{r['messages'][0]['content'][0]['audio_url']['url']}", dtype="float32")
        a = a[: 30 * sr]
        x = proc.feature_extractor(a, sampling_rate=sr, return_tensors="pt").input_features
        with torch.inference_mode():
            h = enc(x).last_hidden_state[0]
        n = max(1, int(len(a) / sr * 50))
        h = h[:n]
        out.append(torch.cat([h.mean(0), h.std(0)]).numpy())
    return np.stack(out)
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("train_manifest")
parser.add_argument("heldout_manifest")
parser.add_argument("--train-clips", type=int, default=600)
parser.add_argument("--cache", help="an .npz file keeping the features between runs")
args = parser.parse_args()
train_rows = [json.loads(l) for l in open(args.train_manifest)]
train_rows = [r for r in train_rows if r["task"] in ("transcribe", "understand")][: args.train_clips]
test_rows = [json.loads(l) for l in open(args.heldout_manifest)]
test_rows = [r for r in test_rows if r["meta"].get("question_kind") == "background"]
t = time.time()
cache = args.cache
if cache and os.path.exists(cache):
    z = np.load(cache); Xtr, Xte = z["Xtr"], z["Xte"]
else:
    Xtr, Xte = feats(args.train_manifest, train_rows), feats(args.heldout_manifest, test_rows)
    if cache:
        np.savez(cache, Xtr=Xtr, Xte=Xte)
ytr = np.array([CLASSES.index(label(r["meta"])) for r in train_rows]); yte = np.array([CLASSES.index(label(r["meta"])) for r in test_rows])
print(f"features in {time.time()-t:.0f}s; train {len(ytr)} {np.bincount(ytr, minlength=5)}, test {len(yte)} {np.bincount(yte, minlength=5)}")
mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
Xtr_t, Xte_t = torch.tensor((Xtr - mu) / sd, dtype=torch.float64), torch.tensor((Xte - mu) / sd, dtype=torch.float64)
for wd in (1e-4, 1e-3, 1e-2):
    lin = torch.nn.Linear(Xtr.shape[1], 5).double()
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=500)
    def closure():
        opt.zero_grad(); loss = torch.nn.functional.cross_entropy(lin(Xtr_t), torch.tensor(ytr)) + wd * lin.weight.pow(2).sum(); loss.backward(); return loss
    opt.step(closure)
    pred = lin(Xte_t).argmax(1).numpy()
    acc = (pred == yte).mean()
    per = {c: round(float((pred[yte == i] == i).mean()), 2) for i, c in enumerate(CLASSES) if (yte == i).any()}
    print(f"wd {wd}: held-out accuracy {acc:.3f} (always the commonest class: {np.bincount(yte).max()/len(yte):.3f}); per class {per}; train acc {(lin(Xtr_t).argmax(1).numpy()==ytr).mean():.3f}")
