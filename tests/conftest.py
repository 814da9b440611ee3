"""Shared fixtures: a tiny tokenizer shipped in tests/assets, tiny random Aero models, clips."""

from pathlib import Path

import numpy as np
import pytest
import torch

from aero.audio import SAMPLE_RATE
from aero.modeling import AeroConfig, AeroForConditionalGeneration

ASSETS = Path(__file__).parent / "assets"
TINY_TOKENIZER = ASSETS / "tiny-tokenizer"
N_MELS = 16


def tiny_config(**overrides) -> AeroConfig:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    text = dict(
        model_type="qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    audio = dict(
        model_type="qwen2_audio_encoder", d_model=32, encoder_layers=2, encoder_attention_heads=2,
        encoder_ffn_dim=64, num_mel_bins=N_MELS,
    )
    text.update(overrides.pop("text", {}))
    audio.update(overrides.pop("audio", {}))
    return AeroConfig(text_config=text, audio_config=audio, audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"), **overrides)


def make_tiny_model(seed: int = 0, **overrides) -> AeroForConditionalGeneration:
    torch.manual_seed(seed)
    model = AeroForConditionalGeneration(tiny_config(**overrides)).eval()
    # Random init leaves near-uniform logits; a larger spread keeps greedy choices away from ties.
    with torch.no_grad():
        model.language_model.lm_head.weight.mul_(20)
    return model


def make_looping_model() -> AeroForConditionalGeneration:
    """A tiny model whose logits are all equal: greedy decoding repeats token 0 forever (a loop the
    repetition guard catches), while any sample wanders off."""
    model = make_tiny_model()
    with torch.no_grad():
        model.language_model.lm_head.weight.zero_()
    return model


def make_tiny_processor(**kwargs):
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    from aero.processing import AeroProcessor

    return AeroProcessor(AutoTokenizer.from_pretrained(TINY_TOKENIZER), WhisperFeatureExtractor(feature_size=N_MELS), **kwargs)


def tone(seconds: float, freq: float = 440.0, sr: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """A tone with a little noise: deterministic, non-silent test audio."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A saved tiny model + processor without a system prompt (a training base)."""
    path = tmp_path_factory.mktemp("base") / "tiny"
    make_tiny_model().save_pretrained(path)
    make_tiny_processor(system_prompt=None).save_pretrained(path)
    return path


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture
def processor():
    return make_tiny_processor()


def write_manifest(root: Path, durations: list[float], name: str = "train.jsonl", texts: list[str] | None = None) -> Path:
    """A reference-format JSONL manifest with one generated wav per sample, paths relative to root."""
    import json

    import soundfile as sf

    root.mkdir(parents=True, exist_ok=True)
    words = "the quick brown fox jumps over the lazy dog hello world".split()
    lines = []
    for i, seconds in enumerate(durations):
        audio = root / "audio" / f"clip{i}.wav"
        audio.parent.mkdir(exist_ok=True)
        sf.write(audio, tone(seconds, 200 + 40 * i, seed=i), SAMPLE_RATE)
        text = texts[i] if texts else " ".join(words[(i + k) % len(words)] for k in range(3 + i % 4))
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": [
                {"type": "audio_url", "audio_url": {"url": f"audio/clip{i}.wav"}},
                {"type": "text", "text": "Please transcribe the audio"},
            ]},
            {"role": "assistant", "content": [{"type": "text", "text": text}]},
        ]}))
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path
