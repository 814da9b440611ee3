"""What the LM reads per second of speech, and what one LM training step costs, for aero-mini v1
(MLP over 4 stacked frames: 6.25 positions/s) and a v2 adapter ("ctc" connector: one position
per CTC emission), side by side in one run.

    python benchmarks/compression.py ADAPTER [--manifest data/aero-mini-heldout/heldout-slt.jsonl]
        [--clips 60] [--rows 3]

- Audio tokens per second of speech: over the first --clips recordings of the manifest, the
  positions the LM reads for the audio (v1: `window_tokens` at stack 4; v2: the connector's
  emissions, counted by the engine's own processor) divided by the audio's duration; beside
  them, the transcripts' own SmolLM2 token count per second (the text rate).
- LM step cost: forward + backward of SmolLM2 (LoRA r 8, as both recipes train it) over one
  packed 4,096-position row, timed --rows times (the same for both: the cost is per position).
  A transcription sample of the mean clip takes its audio positions + its transcript's tokens
  + ~30 prompt positions, which gives the LM stage's samples (and audio hours) per hour.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from aero.audio import duration_seconds, load_audio
from aero.engine import Engine
from aero.models import load, load_with_adapter

ROW = 4096
PROMPT = 30  # positions of the chat template and prompt around a transcription sample


def clips(manifest: Path, n: int) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in manifest.read_text().splitlines()[:n]]
    out = []
    for row in rows:
        user, reply = row["messages"][0]["content"], row["messages"][1]["content"]
        url = next(p["audio_url"]["url"] for p in user if p.get("type") == "audio_url")
        out.append((str(manifest.parent / url), reply[0]["text"]))
    return out


def rates(engine: Engine, items: list[tuple[str, str]]) -> dict:
    processor, seconds, positions, text = engine.processor, 0.0, 0, 0
    for path, transcript in items:
        audio = load_audio(path)
        windows = processor.load_windows([audio])
        seconds += duration_seconds(audio)
        positions += sum(windows.tokens)
        if engine.compressed is not None:  # counted, not decoded: let the store go
            engine.compressed._done.clear()
        text += len(processor.tokenizer(transcript, add_special_tokens=False)["input_ids"])
    return {"audio_per_s": positions / seconds, "text_per_s": text / seconds, "seconds": seconds}


def step_seconds(model, rows: int) -> float:
    from peft import LoraConfig, get_peft_model

    lm = get_peft_model(
        model.language_model,
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    )
    lm.train()
    times = []
    for _ in range(rows + 1):  # the first is a warm-up
        embeds = torch.randn(1, ROW, model.config.text_config.hidden_size) * 0.05
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = lm(inputs_embeds=embeds, labels=torch.randint(0, 1000, (1, ROW))).loss
        loss.backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("adapter")
    parser.add_argument(
        "--manifest", type=Path, default=Path("data/aero-mini-heldout/heldout-slt.jsonl")
    )
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--rows", type=int, default=3)
    args = parser.parse_args()
    items = clips(args.manifest, args.clips)
    v1 = Engine(*load("aero-mini"))
    v2 = Engine(*load_with_adapter(args.adapter))
    measured = {"v1 (MLP, stack 4)": rates(v1, items), "v2 (ctc connector)": rates(v2, items)}
    step = step_seconds(v1.model, args.rows)
    mean_clip = measured["v1 (MLP, stack 4)"]["seconds"] / len(items)
    print(f"{len(items)} clips, {mean_clip:.1f} s each on average; LM step over {ROW} positions:")
    print(f"{step:.1f} s (median of {args.rows}).\n")
    print("| projector | audio positions / s | text tokens / s | positions / sample "
          "| LM stage samples / h | audio h / h |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, m in measured.items():
        per_sample = (m["audio_per_s"] + m["text_per_s"]) * mean_clip + PROMPT
        samples_per_hour = 3600 / step * ROW / per_sample
        print(
            f"| {name} | {m['audio_per_s']:.2f} | {m['text_per_s']:.2f} | {per_sample:.0f} "
            f"| {samples_per_hour:.0f} | {samples_per_hour * mean_clip / 3600:.1f} |"
        )


if __name__ == "__main__":
    main()
