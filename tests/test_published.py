"""The published checkpoint as its users call it: AutoProcessor / AutoModel on the published file
layout, the model card's call, reference-identical ids, tied embeddings, the processor files."""

import json

import numpy as np
import pytest
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment
from safetensors import safe_open
from transformers import AutoModel, AutoModelForCausalLM, AutoProcessor, WhisperFeatureExtractor

from aero.audio import SAMPLE_RATE
from aero.modeling import AeroForConditionalGeneration
from aero.processing import AeroProcessor  # registers model_type "aero" with the Auto classes
from conftest import N_MELS, PUBLISHED_CHAT_TEMPLATE, tone

ASR_PROMPT = "Please recognize the speech and only output the recognized content:"


def reference_ids(tokenizer, samples: np.ndarray, prompt: str = ASR_PROMPT) -> list[int]:
    """The reference pipeline written out by hand (lmms-eval + the reference processor), not aero's
    code: audio split every 480,000 samples, one audio item each; the published chat template; each
    placeholder replaced by as many copies as the encoder gives for the item's attention mask
    (Whisper's feature extractor, padded to 30 s); then the whole prompt tokenized at once."""
    pieces = [samples[i : i + 480_000] for i in range(0, len(samples), 480_000)]
    content = [{"type": "audio", "audio": "x"} for _ in pieces] + [{"type": "text", "text": prompt}]
    template = ImmutableSandboxedEnvironment().from_string(PUBLISHED_CHAT_TEMPLATE)
    text = template.render(
        messages=[{"role": "user", "content": content}], add_generation_prompt=True
    )
    extractor = WhisperFeatureExtractor(feature_size=N_MELS)
    counts = []
    for piece in pieces:
        mask = extractor(
            piece, sampling_rate=16_000, return_attention_mask=True, padding="max_length"
        )["attention_mask"]
        after_conv = (int(np.sum(mask)) - 1) // 2 + 1
        counts.append((after_conv - 2) // 2 + 1)
    for n in counts:
        text = text.replace("<|AUDIO|>", "<placeholder>" * n, 1)
    return tokenizer(text.replace("<placeholder>", "<|AUDIO|>"))["input_ids"]


@pytest.fixture(scope="module")
def auto_processor(published):
    return AutoProcessor.from_pretrained(published)


def test_auto_classes_load_the_published_layout_without_remote_code(published, auto_processor):
    assert isinstance(auto_processor, AeroProcessor)
    assert (
        auto_processor.audio_token_id
        == json.loads((published / "config.json").read_text())["audio_token_index"]
    )
    with safe_open(published / "model.safetensors", "pt") as f:
        assert not any("lm_head" in k for k in f.keys())  # tied: the head is the embedding
    for auto in (AutoModel, AutoModelForCausalLM):
        model = auto.from_pretrained(published)
        assert isinstance(model, AeroForConditionalGeneration)
        lm = model.language_model
        assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
        assert lm.lm_head.weight.shape[0] % 64 == 0 and lm.lm_head.weight.shape[0] > len(
            auto_processor.tokenizer
        )


@pytest.mark.parametrize("seconds", [3.0, 30.004, 65.0])
def test_ids_equal_the_reference_expansion(auto_processor, seconds):
    samples = tone(seconds)
    expected = reference_ids(auto_processor.tokenizer, samples)
    by_messages = auto_processor(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "audio", "audio": samples},
                    {"type": "text", "text": ASR_PROMPT},
                ],
            }
        ]
    )
    assert by_messages["input_ids"][0].tolist() == expected
    prompt = auto_processor.apply_chat_template(
        [
            {
                "role": "user",
                "content": [{"type": "audio", "audio": "x"}, {"type": "text", "text": ASR_PROMPT}],
            }
        ]
    )
    by_text = auto_processor(
        text=prompt, audios=[samples], sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True
    )
    assert by_text["input_ids"][0].tolist() == expected
    # Only windows that give tokens reach the encoder.
    assert by_text["audio_values"].shape[0] == -(-int(seconds * SAMPLE_RATE) // 480_000) - (
        seconds == 30.004
    )


def test_a_tail_too_short_for_a_token_is_dropped_and_reported(auto_processor):
    tok = auto_processor.tokenizer
    samples = tone(30.004)  # 64 samples after the first window: 0 tokens in the reference
    encoded = auto_processor.encode_conversation(
        auto_processor.transcription_messages(samples, ASR_PROMPT), True
    )
    ids = encoded["input_ids"]
    assert ids.count(auto_processor.audio_token_id) == 750
    assert len(ids) == len(reference_ids(tok, samples))
    # Between the audio and the prompt the reference's template leaves "\n\n": one merged id.
    after_audio = ids[len(ids) - ids[::-1].index(auto_processor.audio_token_id)]
    assert tok.convert_ids_to_tokens(after_audio) == "ĊĊ"
    assert len(encoded["audio"].windows) == 1 and encoded["audio"].tokens == [750, 0]
    assert encoded["audio"].warnings and "64 samples" in encoded["audio"].warnings[0]


def test_fifteen_minutes_is_22500_audio_tokens_in_one_sequence(auto_processor):
    samples = tone(15 * 60)
    inputs = auto_processor(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "audio", "audio": samples},
                    {"type": "text", "text": ASR_PROMPT},
                ],
            }
        ]
    )
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(auto_processor.audio_token_id) == 22_500
    assert ids == reference_ids(auto_processor.tokenizer, samples)
    assert inputs["audio_values"].shape[0] == 30


def test_model_card_call_generates_and_a_batch_equals_one_by_one(published, auto_processor):
    model = AutoModelForCausalLM.from_pretrained(published).eval()
    prompt = auto_processor.apply_chat_template(
        [
            {
                "role": "user",
                "content": [
                    {"type": "audio", "audio": "x"},
                    {"type": "text", "text": "Please transcribe the audio"},
                ],
            }
        ]
    )
    clips = [tone(3.0, 300.0, seed=1), tone(7.5, 500.0, seed=2)]
    eos = auto_processor.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def generate(texts, audios):
        inputs = auto_processor(
            text=texts, audios=audios, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True
        )
        out = model.generate(
            **inputs,
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=auto_processor.tokenizer.pad_token_id,
        )
        return [row[inputs["input_ids"].shape[1] :].tolist() for row in out]

    batch = generate([prompt, prompt], clips)
    single = [generate(prompt, [clip])[0] for clip in clips]
    assert all(len(row) > 0 for row in single)
    for b, s in zip(batch, single):
        assert b[: len(s)] == s  # a row that ended early is padded after its end
    assert auto_processor.batch_decode([single[0]])[0] == auto_processor.decode(single[0])


def test_processor_call_conventions(auto_processor):
    prompt = "<|im_start|>user\n<|AUDIO|>\nhi<|im_end|>\n"
    clip = tone(2.0)
    as_lists = auto_processor(text=prompt, audio=clip, return_tensors=None)
    assert isinstance(as_lists["input_ids"], list) and isinstance(as_lists["input_ids"][0], list)
    as_numpy = auto_processor(text=[prompt], audios=[clip], return_tensors="np")
    assert isinstance(as_numpy["input_ids"], np.ndarray)
    assert as_numpy["input_ids"][0].tolist() == as_lists["input_ids"][0]
    padded = auto_processor(
        text=[prompt, "<|im_start|>user\nno audio<|im_end|>\n"],
        audios=[clip],
        padding="max_length",
        max_length=200,
    )
    assert padded["input_ids"].shape == (2, 200) and padded["attention_mask"][1].sum() < 20
    with pytest.raises(ValueError, match="padding=True"):
        auto_processor(
            text=[prompt, "<|im_start|>user\nx<|im_end|>\n"], audios=[clip], padding=False
        )
    with pytest.raises(ValueError, match="never truncates"):
        auto_processor(text=prompt, audios=[clip], truncation=True)
    with pytest.raises(ValueError, match="more than max_length"):
        auto_processor(text=prompt, audios=[clip], padding="max_length", max_length=5)
    with pytest.raises(TypeError, match="unexpected arguments: images"):
        auto_processor(text=prompt, audios=[clip], images=[1])
    with pytest.raises(ValueError, match="audio or audios"):
        auto_processor(text=prompt, audio=[clip], audios=[clip])
    with pytest.raises(ValueError, match=r"has 2 <\|AUDIO\|> placeholders but 1 audios"):
        auto_processor(text=prompt + prompt, audios=[clip])


def test_published_files_round_trip(published, auto_processor, tmp_path):
    auto_processor.save_pretrained(tmp_path / "saved")
    for name in (
        "processor_config.json",
        "chat_template.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ):
        assert (tmp_path / "saved" / name).is_file(), name
    assert (
        json.loads((tmp_path / "saved" / "chat_template.json").read_text())["chat_template"]
        == PUBLISHED_CHAT_TEMPLATE
    )
    reloaded = AutoProcessor.from_pretrained(tmp_path / "saved")
    conversation = [
        {
            "role": "user",
            "content": [{"type": "audio", "audio": tone(4.0)}, {"type": "text", "text": "hi"}],
        }
    ]
    a, b = auto_processor(messages=conversation), reloaded(messages=conversation)
    for key in ("input_ids", "attention_mask", "audio_values", "audio_attention_mask"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert reloaded.feature_extractor.to_dict() == auto_processor.feature_extractor.to_dict()
    # aero's renderer and the published jinja template write the same prompt.
    env = ImmutableSandboxedEnvironment()
    for gen in (True, False):
        text = env.from_string(PUBLISHED_CHAT_TEMPLATE).render(
            messages=conversation, add_generation_prompt=gen
        )
        assert text == reloaded.apply_chat_template(conversation, add_generation_prompt=gen)


def test_audio_too_short_for_one_token_is_an_error(auto_processor):
    from aero.audio import AudioError

    with pytest.raises(AudioError, match="too short for one audio token"):
        auto_processor(text="<|AUDIO|>\nhi", audios=[tone(0.01)])
