"""Augmentation: sox effects (telephone band, speed, tempo, reverb, pitch) plus noise, music and
gain.

Notable choices:
- Every random choice is drawn while planning, in the main process, and stored in the
  sample's metadata as a list of `{"effect": ..., ...}` records; rendering only replays them,
  so the same seed gives the same audio whatever the number of workers.
- sox runs on 32-bit float files with dithering off (-D) and repeatable mode (-R), so it adds
  no randomness of its own.
- Noise and music are made in numpy from a per-sample seed rather than by `sox synth`, whose
  repeatable mode would give every clip the same noise. Their level is set by an exact SNR
  against the speech's power.
- Gain is a final peak level in dBFS; every clip is kept below full scale (no clipping).
- A recording channel (`plan_channel`) is what real recordings pass through after the room and
  the noise: a telephone line (300-3400 Hz at 8 kHz, then G.711 mu-law/A-law or AMR-NB at
  4.75-12.2 kbit/s) or a wideband codec (Opus, MP3, AAC at low bit rates), plus a room more
  often than the plain plan. Codecs run in PyAV (ffmpeg's own encoders), encoded and decoded
  back to 16 kHz, after the noise is mixed in, as a phone or a streaming app would.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import tempfile

import numpy as np

from aero.audio import SAMPLE_RATE
from aero.data.synth.tools import require

TELEPHONE_BAND = (300, 3400)  # Hz
TELEPHONE_RATE = 8000  # Hz, the round trip of narrow-band telephony
NOISE_KINDS = ("white", "pink", "brown")
BACKGROUNDS = NOISE_KINDS + ("music",)


def plan(
    rng: random.Random, p: float, background: str | None = "random", speed: bool = True
) -> list[dict]:
    """Effects for one clip; with probability 1-p none at all (a clean sample).

    background: "random" (maybe), None (never), or a kind from BACKGROUNDS (always that one).
    speed: whether speed/tempo changes are allowed (not when the speaking rate is a label).
    """
    effects: list[dict] = []
    augmented = rng.random() < p
    if augmented and speed and rng.random() < 0.3:
        if rng.random() < 0.5:
            effects.append({"effect": "speed", "factor": round(rng.uniform(0.9, 1.1), 3)})
        else:
            effects.append({"effect": "tempo", "factor": round(rng.uniform(0.85, 1.15), 3)})
    if augmented and rng.random() < 0.25:
        effects.append(
            {
                "effect": "reverb",
                "reverberance": rng.randint(20, 80),
                "room_scale": rng.randint(20, 100),
            }
        )
    if augmented and rng.random() < 0.2:
        effects.append(
            {"effect": "telephone", "band_hz": list(TELEPHONE_BAND), "rate": TELEPHONE_RATE}
        )
    kind = background
    if background == "random":
        kind = rng.choice(BACKGROUNDS) if augmented and rng.random() < 0.5 else None
    if kind is not None:
        snr = rng.uniform(5, 20) if kind == "music" else rng.uniform(5, 30)
        effects.append(
            {
                "effect": "noise" if kind != "music" else "music",
                "kind": kind,
                "snr_db": round(snr, 1),
                "seed": rng.randrange(2**31),
            }
        )
    if augmented:
        effects.append({"effect": "gain", "peak_db": round(rng.uniform(-25, -1), 1)})
    return effects


# (codec, sample rate, bit rates to draw from; None: the codec's only rate)
NARROWBAND_CODECS = (
    ("pcm_mulaw", 8000, None),
    ("pcm_alaw", 8000, None),
    ("libopencore_amrnb", 8000, (4750, 5900, 7400, 10200, 12200)),
)
AAC_PRIMING = 1024  # samples
WIDEBAND_CODECS = (
    ("libopus", 16000, (8000, 12000, 16000, 24000)),
    ("libmp3lame", 16000, (16000, 24000, 32000, 48000)),
    ("aac", 16000, (24000, 32000, 48000)),
)


def plan_channel(rng: random.Random, effects: list[dict]) -> list[dict]:
    """The effect list with a recording channel added: a room (if none) with probability 0.4,
    then a telephone line with its codec (half the time) or a wideband codec. The codec comes
    last but before the final gain, so it encodes the speech, room and noise together."""
    out = [e for e in effects if e["effect"] != "gain"]
    gain = [e for e in effects if e["effect"] == "gain"]
    if not any(e["effect"] == "reverb" for e in out) and rng.random() < 0.4:
        room = {"effect": "reverb", "reverberance": rng.randint(10, 70)}
        out.append({**room, "room_scale": rng.randint(10, 80)})
    narrow = rng.random() < 0.5
    if narrow and not any(e["effect"] == "telephone" for e in out):
        out.append({"effect": "telephone", "band_hz": list(TELEPHONE_BAND), "rate": TELEPHONE_RATE})
    codec, rate, bitrates = rng.choice(NARROWBAND_CODECS if narrow else WIDEBAND_CODECS)
    out.append(
        {
            "effect": "codec",
            "codec": codec,
            "rate": rate,
            "bitrate": rng.choice(bitrates) if bitrates else None,
        }
    )
    if not gain:
        gain = [{"effect": "gain", "peak_db": round(rng.uniform(-25, -1), 1)}]
    return out + gain


def check_codecs(names: set[str]) -> None:
    """Raise one error naming every codec in `names` this PyAV build cannot encode."""
    import av

    missing = []
    for name in sorted(names):
        try:
            av.codec.Codec(name, "w")
        except av.codec.codec.UnknownCodecError:
            missing.append(name)
    if missing:
        raise RuntimeError(
            f"PyAV {av.__version__} cannot encode {', '.join(missing)}, which the recipe's "
            "recording channels use; install a PyAV wheel built with it (aero pins av<18.1: "
            "18.1 dropped AMR-NB) or set the splits' channel to 0."
        )


def codec(audio: np.ndarray, effect: dict) -> np.ndarray:
    """16 kHz float32 audio encoded with `effect`'s codec and decoded back to 16 kHz."""
    import av

    from aero.audio import load_audio

    buffer = io.BytesIO()
    container_format = {"libopus": "ogg", "libmp3lame": "mp3", "aac": "adts"}.get(
        effect["codec"], "wav" if effect["codec"].startswith("pcm_") else "amr"
    )
    with av.open(buffer, "w", format=container_format) as out:
        stream = out.add_stream(effect["codec"], rate=effect["rate"], layout="mono")
        if effect["bitrate"]:
            stream.bit_rate = effect["bitrate"]
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=effect["rate"])
        pcm = np.clip(audio, -1, 1).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(pcm, format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for piece in [*resampler.resample(frame), *resampler.resample(None)]:
            out.mux(stream.encode(piece))
        out.mux(stream.encode(None))
    # AAC's decoder output starts with one frame of encoder priming (1024 samples) that players
    # skip; the others start within a few ms
    decoded = load_audio(buffer.getvalue())[AAC_PRIMING if effect["codec"] == "aac" else 0 :]
    n = len(audio)
    return np.pad(decoded, (0, max(0, n - len(decoded))))[:n].astype(np.float32)


def background_of(effects: list[dict]) -> str | None:
    """The background sound kind in an effect list (None if the speech is alone)."""
    return next((e["kind"] for e in effects if e["effect"] in ("noise", "music")), None)


def _sox_args(effects: list[dict]) -> list[str]:
    args: list[str] = []
    for e in effects:
        if e["effect"] == "pitch":
            args += ["pitch", str(e["cents"])]
        elif e["effect"] in ("speed", "tempo"):
            args += [e["effect"], str(e["factor"])]
        elif e["effect"] == "reverb":
            args += ["reverb", str(e["reverberance"]), "50", str(e["room_scale"])]
        elif e["effect"] == "telephone":
            lo, hi = e["band_hz"]
            args += ["sinc", f"{lo}-{hi}", "rate", str(e["rate"]), "rate", str(SAMPLE_RATE)]
    return args


def sox(audio: np.ndarray, args: list[str], workdir: str) -> np.ndarray:
    """Run a sox effect chain on 16 kHz float32 audio; returns 16 kHz mono float32."""
    import soundfile as sf

    fd_in, src = tempfile.mkstemp(suffix=".wav", dir=workdir)
    fd_out, dst = tempfile.mkstemp(suffix=".wav", dir=workdir)
    os.close(fd_in), os.close(fd_out)
    try:
        sf.write(src, audio, SAMPLE_RATE, subtype="FLOAT")
        cmd = [
            require("sox"),
            "-R",
            "-D",
            "-q",
            src,
            "-e",
            "floating-point",
            "-b",
            "32",
            dst,
            *args,
            "channels",
            "1",
            "rate",
            str(SAMPLE_RATE),
        ]
        subprocess.run(cmd, check=True, capture_output=True)
        out, _ = sf.read(dst, dtype="float32")
    finally:
        os.unlink(src), os.unlink(dst)
    return out


def colored_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    spectrum = np.fft.rfft(white)
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    f[0] = f[1] if n > 1 else 1.0
    spectrum /= np.sqrt(f) if kind == "pink" else f  # power 1/f (pink) or 1/f^2 (brown)
    return np.fft.irfft(spectrum, n)


def music(n: int, rng: np.random.Generator) -> np.ndarray:
    """A simple synthetic tune: notes of a random major scale with harmonics and soft chords."""
    out = np.zeros(n)
    tonic = 220.0 * 2 ** (rng.integers(0, 12) / 12)
    scale = [0, 2, 4, 5, 7, 9, 11, 12]
    note_len = int(SAMPLE_RATE * rng.uniform(0.15, 0.45))
    t = np.arange(note_len) / SAMPLE_RATE
    env = np.minimum(1.0, t / 0.01) * np.exp(-t * rng.uniform(2, 6))
    for start in range(0, n, note_len):
        chord = [scale[rng.integers(0, len(scale))]] + (
            [scale[rng.integers(0, 5)] - 12] if rng.random() < 0.5 else []
        )
        tone = np.zeros(note_len)
        for step in chord:
            f0 = tonic * 2 ** (step / 12)
            tone += sum(np.sin(2 * np.pi * f0 * k * t) / k**1.5 for k in (1, 2, 3))
        seg = (tone * env)[: n - start]
        out[start : start + len(seg)] += seg
    return out


def apply(audio: np.ndarray, effects: list[dict], workdir: str) -> np.ndarray:
    """Replay a planned effect list on 16 kHz float32 speech."""
    args = _sox_args(effects)
    if args:
        audio = sox(audio, args, workdir)
    audio = audio.astype(np.float64)
    for e in effects:
        if e["effect"] in ("noise", "music"):
            rng = np.random.default_rng(e["seed"])
            bg = (
                music(len(audio), rng)
                if e["effect"] == "music"
                else colored_noise(e["kind"], len(audio), rng)
            )
            p_speech, p_bg = np.mean(audio**2), np.mean(bg**2)
            if p_bg > 0 and p_speech > 0:
                audio = audio + bg * np.sqrt(p_speech / p_bg / 10 ** (e["snr_db"] / 10))
    for e in effects:
        if e["effect"] == "codec":
            audio = codec(audio.astype(np.float32), e).astype(np.float64)
    peak = float(np.max(np.abs(audio))) or 1.0
    gain = next((e for e in effects if e["effect"] == "gain"), None)
    target = 10 ** (gain["peak_db"] / 20) if gain else min(peak, 0.95)
    return (audio * (target / peak)).astype(np.float32)
