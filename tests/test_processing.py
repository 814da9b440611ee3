"""The processor: chat format, placeholder expansion, labels, batching, errors."""

import base64
import io
import json

import pytest
import soundfile as sf
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment

from aero.audio import SAMPLE_RATE, AudioError
from aero.processing import IGNORE_INDEX, TRANSCRIBE_PROMPT, AeroProcessor
from conftest import make_tiny_processor, tone

REFERENCE_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|AUDIO|>\n<|AUDIO|>\nPlease transcribe the audio<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def user_turn(*audios, text="Please transcribe the audio"):
    return {
        "role": "user",
        "content": [{"type": "audio", "audio": a} for a in audios]
        + [{"type": "text", "text": text}],
    }


def test_prompt_matches_reference_format(processor):
    conversation = [user_turn("a.wav", "b.wav")]
    assert processor.apply_chat_template(conversation) == REFERENCE_PROMPT
    # An explicit system turn replaces the default one.
    custom = [{"role": "system", "content": "Be brief."}, user_turn("a.wav")]
    assert processor.apply_chat_template(custom).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user"
    )


@pytest.mark.parametrize("system_prompt", ["You are a helpful assistant.", None])
def test_saved_jinja_template_renders_the_same(system_prompt):
    processor = make_tiny_processor(system_prompt=system_prompt)
    env = ImmutableSandboxedEnvironment()
    conversations = [
        [user_turn("a.wav", "b.wav")],
        [
            {"role": "system", "content": "S"},
            user_turn("a.wav"),
            {"role": "assistant", "content": "x"},
            user_turn(text="more?"),
        ],
        [
            {
                "role": "user",
                "content": [
                    {"type": "audio_url", "audio_url": {"url": "a.wav"}},
                    {"type": "text", "text": "q"},
                ],
            }
        ],
    ]
    for conversation in conversations:
        for gen in (True, False):
            rendered = env.from_string(processor.chat_template).render(
                messages=conversation, add_generation_prompt=gen
            )
            assert rendered == processor.apply_chat_template(
                conversation, add_generation_prompt=gen
            )


def test_75_seconds_gives_three_windows_with_reference_spans(processor):
    inputs = processor(messages=[user_turn(tone(75))])
    ids = inputs["input_ids"][0].tolist()
    aid = processor.audio_token_id
    # Three runs of placeholders separated by "\n", lengths 750, 750, 375.
    runs, n = [], 0
    for i in ids + [-1]:
        if i == aid:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    assert runs == [750, 750, 375]
    assert inputs["audio_values"].shape[0] == 3
    assert inputs["audio_attention_mask"].sum(-1).tolist() == [3000, 3000, 1500]


def test_fifteen_minutes_in_one_sequence_without_truncation(processor):
    inputs = processor(messages=[user_turn(tone(15 * 60))])
    assert inputs["audio_values"].shape[:1] == (30,)
    assert int((inputs["input_ids"] == processor.audio_token_id).sum()) == 30 * 750
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    assert text.count("<|AUDIO|>\n") == 30  # each run ends with the window separator
    assert text.endswith("Please transcribe the audio<|im_end|>\n<|im_start|>assistant\n")


def test_text_mode_equals_messages_mode(processor):
    clips = [tone(40.0), tone(2.0, seed=3)]
    by_messages = processor(messages=[user_turn(*clips)])
    prompt = processor.apply_chat_template([user_turn("x", "y")])
    by_text = processor(text=prompt, audios=clips, sampling_rate=SAMPLE_RATE)
    for key in by_messages:
        torch.testing.assert_close(by_messages[key], by_text[key], rtol=0, atol=0)


def test_placeholder_and_audio_counts_must_agree(processor):
    prompt = processor.apply_chat_template([user_turn("x", "y")])
    with pytest.raises(ValueError, match="2 <\\|AUDIO\\|> placeholders but 1 audios"):
        processor(text=prompt, audios=[tone(1.0)])
    with pytest.raises(ValueError, match="2 <\\|AUDIO\\|> placeholders but 3 audios"):
        processor(text=prompt, audios=[tone(1.0)] * 3)
    with pytest.raises(ValueError, match="more <\\|AUDIO\\|> placeholders than audio windows"):
        processor(messages=[user_turn(text="a <|AUDIO|> in text")])


def test_bad_audio_in_messages_names_the_file(processor, tmp_path):
    with pytest.raises(AudioError, match="missing.flac"):
        processor(messages=[user_turn(str(tmp_path / "missing.flac"))])


def test_labels_supervise_only_assistant_tokens(processor):
    conversation = [
        user_turn(tone(1.0)),
        {"role": "assistant", "content": "hello world"},
        user_turn(text="again"),
        {"role": "assistant", "content": [{"type": "text", "text": "the quick fox"}]},
    ]
    sample = processor.encode_conversation(conversation)
    ids, labels = sample["input_ids"], sample["labels"]
    assert len(ids) == len(labels)
    supervised = processor.tokenizer.decode([i for i, l in zip(ids, labels) if l != IGNORE_INDEX])
    assert supervised == "hello world<|im_end|>the quick fox<|im_end|>"
    assert all(l == IGNORE_INDEX for i, l in zip(ids, labels) if i == processor.audio_token_id)
    # The training ids are exactly the rendered conversation, tokenized.
    rendered = processor.apply_chat_template(
        [user_turn("x")] + conversation[1:], add_generation_prompt=False
    )
    plain = processor.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    collapsed = [i for k, i in enumerate(ids) if i != processor.audio_token_id or ids[k - 1] != i]
    assert collapsed == plain


def test_pad_left_for_generation_right_for_training(processor):
    out = processor.pad([[1, 2, 3], [4]], padding_side="left")
    pad = processor.tokenizer.pad_token_id
    assert out["input_ids"].tolist() == [[1, 2, 3], [pad, pad, 4]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    out = processor.pad([[1, 2, 3], [4]], labels=[[-100, 2, 3], [4]], padding_side="right")
    assert out["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]


def test_audio_part_kinds(processor, tmp_path):
    x = tone(1.0)
    path = tmp_path / "a.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    buf = io.BytesIO()
    sf.write(buf, x, SAMPLE_RATE, subtype="FLOAT", format="WAV")
    parts = [
        {"type": "audio", "audio": str(path)},
        {"type": "audio_url", "audio_url": {"url": "a.wav"}},
        {
            "type": "input_audio",
            "input_audio": {"data": base64.b64encode(buf.getvalue()).decode(), "format": "wav"},
        },
    ]
    values = [
        processor(messages=[{"role": "user", "content": [p]}], root=tmp_path)["audio_values"]
        for p in parts
    ]
    for v in values[1:]:
        torch.testing.assert_close(v, values[0])
    bad = {"type": "input_audio", "input_audio": {"data": "***", "format": "wav"}}
    with pytest.raises(AudioError, match="not valid base64"):
        processor(messages=[{"role": "user", "content": [bad]}])


def test_save_and_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path / "p")
    loaded = AeroProcessor.from_pretrained(tmp_path / "p")
    assert loaded.audio_token_id == processor.audio_token_id
    assert loaded.feature_extractor.feature_size == processor.feature_extractor.feature_size
    # The published file set, each file holding what the reference's loaders read.
    saved = {f.name for f in (tmp_path / "p").iterdir()}
    assert {
        "processor_config.json",
        "chat_template.json",
        "preprocessor_config.json",
        "tokenizer_config.json",
    } <= saved
    assert (
        json.loads((tmp_path / "p" / "chat_template.json").read_text())["chat_template"]
        == processor.chat_template
    )
    settings = json.loads((tmp_path / "p" / "processor_config.json").read_text())
    assert settings["processor_class"] == "AeroProcessor" and settings["audio_token"] == "<|AUDIO|>"
    assert (
        json.loads((tmp_path / "p" / "tokenizer_config.json").read_text())["processor_class"]
        == "AeroProcessor"
    )
    assert (
        loaded.chat_template == processor.chat_template
        and loaded.system_prompt == processor.system_prompt
    )
    conversation = [user_turn(tone(2.0))]
    a, b = processor(messages=conversation), loaded(messages=conversation)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_transcription_prompt_is_the_processors_own_and_saved(tmp_path):
    asr = "Please recognize the speech and only output the recognized content:"
    processor = make_tiny_processor(transcribe_prompt=asr)
    assert processor.transcription_messages(tone(1.0))[0]["content"][1] == {
        "type": "text",
        "text": asr,
    }
    assert (
        processor.transcription_messages(tone(1.0), "Say it.")[0]["content"][1]["text"] == "Say it."
    )
    processor.save_pretrained(tmp_path / "p")
    assert AeroProcessor.from_pretrained(tmp_path / "p").transcribe_prompt == asr
    (tmp_path / "p" / "processor_config.json").write_text(
        '{"audio_token": "<|AUDIO|>"}'
    )  # saved before the setting
    assert AeroProcessor.from_pretrained(tmp_path / "p").transcribe_prompt == TRANSCRIBE_PROMPT
