"""The model: encoder parity with transformers, merge errors, checkpoint layout, generation."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, WhisperFeatureExtractor
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

from aero.audio import SAMPLE_RATE, encoder_output_lengths, mel_frames
from aero.modeling import AeroForConditionalGeneration
from aero.processing import AeroProcessor
from conftest import N_MELS, make_tiny_model, make_tiny_processor, tone

CLIP_SECONDS = [2.37, 7.0, 30.0, 0.5]


def reference_encode(tower: Qwen2AudioEncoder, clips: list[np.ndarray]) -> list[torch.Tensor]:
    """The reference path: every window padded to 30 s, (B,1,1500,1500) key-padding mask,
    transformers' own `Qwen2AudioEncoder.forward`, then the first `tokens` outputs."""
    fe = WhisperFeatureExtractor(feature_size=N_MELS)
    out = fe(
        clips,
        sampling_rate=SAMPLE_RATE,
        padding="max_length",
        return_attention_mask=True,
        return_tensors="pt",
    )
    positions, tokens = encoder_output_lengths(out["attention_mask"].sum(-1))
    pad = torch.arange(1500)[None, :] >= positions[:, None]
    mask = torch.zeros(pad.shape).masked_fill(pad, torch.finfo(torch.float32).min)
    mask = mask[:, None, None, :].expand(-1, 1, 1500, 1500)
    hidden = tower(out["input_features"], attention_mask=mask).last_hidden_state
    return [h[:n] for h, n in zip(hidden, tokens.tolist())]


@pytest.fixture(scope="module")
def model():
    return make_tiny_model()


def test_real_length_encoder_equals_qwen2audio_encoder(model):
    clips = [tone(s, seed=i) for i, s in enumerate(CLIP_SECONDS)]
    expected = reference_encode(model.audio_tower, clips)
    processor = make_tiny_processor()
    # Batched: each window cut to the batch's longest real length, key-padding masked.
    values, mask = processor.audio_features(clips)
    assert values.shape[-1] == 3000  # one full window in the batch
    features, tokens = model.encode_audio(values, mask)
    assert tokens.tolist() == [e.shape[0] for e in expected]
    for f, n, e in zip(features, tokens.tolist(), expected):
        torch.testing.assert_close(f[:n], e, rtol=1e-5, atol=1e-5)
    # One window alone, at its real length (no padding, no mask).
    for clip, e in zip(clips, expected):
        values, mask = processor.audio_features([clip])
        assert values.shape[-1] == min(mel_frames(len(clip)) + 2, 3000)
        f, t = model.encode_audio(values, mask)
        torch.testing.assert_close(f[0, : t[0]], e, rtol=1e-5, atol=1e-5)


def test_reference_padded_features_also_accepted(model):
    """Features padded to 3000 frames, as the reference processor emits, give the same result."""
    clips = [tone(3.1), tone(11.3, seed=2)]
    fe = WhisperFeatureExtractor(feature_size=N_MELS)
    out = fe(
        clips,
        sampling_rate=SAMPLE_RATE,
        padding="max_length",
        return_attention_mask=True,
        return_tensors="pt",
    )
    f, t = model.encode_audio(out["input_features"], out["attention_mask"])
    expected = reference_encode(model.audio_tower, clips)
    for row, n, e in zip(f, t.tolist(), expected):
        torch.testing.assert_close(row[:n], e, rtol=1e-5, atol=1e-5)


def test_key_padding_mask_is_honoured(model):
    """Garbage past a window's real frames must not change its features."""
    processor = make_tiny_processor()
    values, mask = processor.audio_features([tone(1.0), tone(4.0, seed=1)])
    noisy = values.clone()
    noisy[0, :, 102:] = torch.randn_like(noisy[0, :, 102:]) * 10
    a, t = model.encode_audio(values, mask)
    b, _ = model.encode_audio(noisy, mask)
    torch.testing.assert_close(a[0, : t[0]], b[0, : t[0]])
    c, _ = model.encode_audio(noisy, None)  # no mask: the garbage leaks in
    assert not torch.allclose(a[0, : t[0]], c[0, : t[0]], atol=1e-3)


def test_window_longer_than_30s_is_an_error(model):
    with pytest.raises(ValueError, match="3002 mel frames; at most 3000"):
        model.encode_audio(torch.zeros(1, N_MELS, 3002))


def test_placeholder_count_mismatch_names_both_counts(model, processor):
    inputs = processor(
        messages=[{"role": "user", "content": [{"type": "audio", "audio": tone(2.0)}]}]
    )
    ids = inputs["input_ids"].clone()
    n = int((ids == model.config.audio_token_index).sum())
    ids[0, ids[0].tolist().index(model.config.audio_token_index)] = 5
    with pytest.raises(
        ValueError, match=rf"{n - 1} <\|AUDIO\|> positions but the audio gives {n} features"
    ):
        model(
            input_ids=ids,
            audio_values=inputs["audio_values"],
            audio_attention_mask=inputs["audio_attention_mask"],
        )
    with pytest.raises(ValueError, match="placeholders but no audio_values"):
        model(input_ids=inputs["input_ids"])


def write_published_layout(
    model: AeroForConditionalGeneration, processor: AeroProcessor, path
) -> None:
    """A checkpoint written as the release is: 4.51-era config.json with remote-code pointers,
    `audio_tower.*`, `audio_modal_projector.linear.*`, `language_model.model.*`,
    `language_model.lm_head.weight`, processor files."""
    path.mkdir()
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    text, audio = model.config.text_config, model.config.audio_config
    config = {
        "architectures": ["AeroForConditionalGeneration"],
        "auto_map": {
            "AutoConfig": "configuration_aero.AeroConfig",
            "AutoModelForCausalLM": "modeling_aero.AeroForConditionalGeneration",
        },
        "audio_config": {
            "model_type": "qwen2_audio_encoder",
            "d_model": audio.d_model,
            "encoder_layers": audio.encoder_layers,
            "encoder_attention_heads": audio.encoder_attention_heads,
            "encoder_ffn_dim": audio.encoder_ffn_dim,
            "num_mel_bins": audio.num_mel_bins,
            "max_source_positions": 1500,
            "torch_dtype": "float32",
        },
        "text_config": {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": text.vocab_size,
            "hidden_size": text.hidden_size,
            "intermediate_size": text.intermediate_size,
            "num_hidden_layers": text.num_hidden_layers,
            "num_attention_heads": text.num_attention_heads,
            "num_key_value_heads": text.num_key_value_heads,
            "max_position_embeddings": 32768,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-6,
            "use_sliding_window": False,
            "sliding_window": 32768,
            "max_window_layers": 21,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "hidden_act": "silu",
            "bos_token_id": 151643,
            "eos_token_id": 151645,
        },
        "audio_token_index": model.config.audio_token_index,
        "model_type": "aero",
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.51.3",
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    processor.save_pretrained(path)


def test_published_layout_loads_with_same_logits(model, processor, tmp_path):
    keys = model.state_dict().keys()
    assert {k.split(".")[0] for k in keys} == {
        "audio_tower",
        "audio_modal_projector",
        "language_model",
    }
    assert "audio_modal_projector.linear.weight" in keys and "language_model.lm_head.weight" in keys
    assert any(k.startswith("language_model.model.layers.") for k in keys)
    write_published_layout(model, processor, tmp_path / "ckpt")

    loaded = AutoModel.from_pretrained(tmp_path / "ckpt").eval()
    assert isinstance(loaded, AeroForConditionalGeneration)
    loaded_processor = AeroProcessor.from_pretrained(tmp_path / "ckpt")
    conversation = [
        {
            "role": "user",
            "content": [{"type": "audio", "audio": tone(3.3)}, {"type": "text", "text": "hi"}],
        }
    ]
    inputs = processor(messages=conversation)
    again = loaded_processor(messages=conversation)
    for key in inputs:
        torch.testing.assert_close(inputs[key], again[key], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_save_load_is_exact(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    loaded = AeroForConditionalGeneration.from_pretrained(tmp_path / "m")
    keys = load_file(tmp_path / "m" / "model.safetensors").keys()
    assert "audio_modal_projector.linear.bias" in keys and "language_model.lm_head.weight" in keys
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert loaded.config.audio_token_index == model.config.audio_token_index


def greedy_without_cache(model, inputs, steps: int) -> list[int]:
    ids = inputs["input_ids"]
    audio = {k: inputs[k] for k in ("audio_values", "audio_attention_mask")}
    out = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(
                input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **audio
            ).logits
            nxt = logits[0, -1].argmax().item()
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def test_generate_with_cache_equals_loop_without_cache(model, processor):
    inputs = processor(
        messages=[{"role": "user", "content": [{"type": "audio", "audio": tone(4.0)}]}]
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert new == greedy_without_cache(model, inputs, 12)


def test_batch_of_three_lengths_equals_one_by_one(model, processor):
    clips = [
        tone(1.3, 300),
        tone(6.2, 500, seed=1),
        tone(31.5, 700, seed=2),
    ]  # the last is 2 windows
    conversations = [
        [
            {
                "role": "user",
                "content": [
                    {"type": "audio", "audio": c},
                    {"type": "text", "text": "Please transcribe the audio"},
                ],
            }
        ]
        for c in clips
    ]
    kwargs = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False)
    batch = processor(messages=conversations)
    assert batch["audio_values"].shape[0] == 4
    assert (batch["attention_mask"][:, -1] == 1).all() and (
        batch["attention_mask"][:, 0] == 0
    ).any()  # left pad
    with torch.no_grad():
        together = model.generate(**batch, **kwargs)[:, batch["input_ids"].shape[1] :]
        for row, conversation in enumerate(conversations):
            single = processor(messages=conversation)
            alone = model.generate(**single, **kwargs)[0, single["input_ids"].shape[1] :]
            assert together[row].tolist() == alone.tolist()
            assert processor.decode(together[row]) == processor.decode(alone)


@pytest.mark.parametrize("stack,kind", [(4, "mlp"), (3, "linear")])
def test_frame_stacking_and_mlp_projector(stack, kind, tmp_path):
    """A compact-model option: k encoder frames per audio token; counts follow the one formula."""
    model = make_tiny_model(projector_stack=stack, projector_type=kind)
    processor = make_tiny_processor(audio_stack=stack)
    clips = [tone(2.0), tone(31.0, seed=1)]
    inputs = processor(
        messages=[{"role": "user", "content": [{"type": "audio", "audio": c} for c in clips]}]
    )
    expected = sum(encoder_output_lengths(mel_frames(n), stack)[1] for n in (32000, 480000, 16000))
    assert int((inputs["input_ids"] == processor.audio_token_id).sum()) == expected
    assert (
        model.get_audio_features(inputs["audio_values"], inputs["audio_attention_mask"]).shape[0]
        == expected
    )
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    again = AeroProcessor.from_pretrained(tmp_path / "m")
    assert again.audio_stack == stack
    loaded = AeroForConditionalGeneration.from_pretrained(tmp_path / "m")
    assert loaded.config.projector_stack == stack and loaded.config.projector_type == kind
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, logits)
