"""aero.vllm.prompt restates AeroProcessor's conventions for the vLLM environment (whose older
transformers cannot import aero.modeling / aero.processing): here, in aero's environment, each
restated piece is held equal to aero's own. No vLLM needed."""

import numpy as np
import pytest
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment

from aero.audio import length_groups
from aero.vllm import prompt
from conftest import TINY_QWEN2_TOKENIZER, make_tiny_processor, tone


def test_vllm_prompt_renders_the_processors_template():
    for system in ("You are a helpful assistant.", None):
        assert (
            prompt.chat_template(system) == make_tiny_processor(system_prompt=system).chat_template
        )


def test_length_groups_cover_every_window_once_within_the_slack():
    frames = [3000, 300, 310, 2900, 1200, 3000, 5, 1290]
    groups = length_groups(frames)
    assert sorted(i for g in groups for i, _ in g) == list(range(len(frames)))
    assert [[i for i, _ in g] for g in groups] == [[6], [1, 2], [4, 7], [3, 0, 5]]
    assert all(max(f for _, f in g) <= 1.1 * min(f for _, f in g) + 2 for g in groups)


def vllm_style_ids(processor, samples: np.ndarray) -> list[int]:
    """What vLLM does with one recording: render the chat format with one `<|AUDIO|>` per audio
    item, tokenize the whole prompt, replace the placeholder by `placeholder_ids`."""
    messages = processor.transcription_messages("x")
    template = ImmutableSandboxedEnvironment().from_string(processor.chat_template)
    text = template.render(messages=messages, add_generation_prompt=True)
    ids = processor.tokenizer.encode(text, add_special_tokens=False)
    _, tokens = prompt.recording_windows(samples, processor.audio_stack)
    separator = processor.tokenizer.encode(prompt.WINDOW_SEPARATOR, add_special_tokens=False)
    expansion = prompt.placeholder_ids(tokens, processor.audio_token_id, separator)
    k = ids.index(processor.audio_token_id)
    return ids[:k] + expansion + ids[k + 1 :]


@pytest.fixture(params=[1, 4], ids=["published", "stack4"])
def qwen_processor(request):
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    from aero.processing import AeroProcessor

    tok = AutoTokenizer.from_pretrained(TINY_QWEN2_TOKENIZER)
    return AeroProcessor(tok, WhisperFeatureExtractor(feature_size=16), audio_stack=request.param)


@pytest.mark.parametrize("seconds", [0.05, 3.0, 30.0, 65.0, 95.5])
def test_recording_ids_equal_aero_processor(qwen_processor, seconds):
    samples = tone(seconds)
    messages = qwen_processor.transcription_messages(samples)
    expected = qwen_processor.encode_conversation(messages, add_generation_prompt=True)
    assert vllm_style_ids(qwen_processor, samples) == expected["input_ids"]


def test_a_tail_without_tokens_keeps_the_prompts_own_newline(qwen_processor):
    """30 s + <= 20 ms: AeroProcessor drops the tail's placeholder but keeps its "\\n", which
    Qwen2's tokenizer merges with the next into one "\\n\\n" id; vLLM's prompt has one audio
    item, so one "\\n" there (as for exactly 30 s): the one documented difference."""
    samples = tone(30.004)
    messages = qwen_processor.transcription_messages(samples)
    ours = qwen_processor.encode_conversation(messages, add_generation_prompt=True)["input_ids"]
    theirs = vllm_style_ids(qwen_processor, samples)
    tok = qwen_processor.tokenizer
    nl, nlnl = (
        tok.encode("\n", add_special_tokens=False),
        tok.encode("\n\n", add_special_tokens=False),
    )
    assert len(nl) == 1 and len(nlnl) == 1
    k = ours.index(nlnl[0], ours.index(qwen_processor.audio_token_id))
    assert theirs == ours[:k] + nl + ours[k + 1 :]


def test_too_short_audio_is_a_clear_error():
    with pytest.raises(ValueError, match="too short for one audio token"):
        prompt.recording_windows(np.zeros(100, np.float32))


def test_window_features_equal_aero_processor():
    """Per recording (vLLM) or per batch (aero's engine), a window's kept frames are the same."""
    processor = make_tiny_processor()
    windows = [tone(30.0), tone(2.2, seed=1), tone(7.03, seed=2)]
    batch, mask = processor.audio_features(windows)
    for k, window in enumerate(windows):
        alone = prompt.window_features(processor.feature_extractor, [window])[0]
        keep = min(int(mask[k].sum()) + prompt.ENCODER_LOOKAHEAD_FRAMES, alone.shape[-1])
        torch.testing.assert_close(alone[:, :keep], batch[k, :, :keep], rtol=0, atol=1e-6)
