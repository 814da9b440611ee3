"""Shared fixtures: a tiny tokenizer shipped in tests/assets, tiny random Aero models, clips.

Tests never reach the Hugging Face Hub: HF_HUB_OFFLINE is set and the hub cache is an empty
temporary folder before transformers is imported (a test that needs the Hub's absence or a
cached model sets those up itself).
"""

import atexit
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="aero-test-hf-cache-")
atexit.register(shutil.rmtree, os.environ["HF_HUB_CACHE"], ignore_errors=True)
os.environ.pop("AERO_MODEL", None)

import json  # noqa: E402 - after the environment above
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from aero.audio import SAMPLE_RATE  # noqa: E402
from aero.modeling import AeroConfig, AeroForConditionalGeneration  # noqa: E402

ASSETS = Path(__file__).parent / "assets"
TINY_TOKENIZER = ASSETS / "tiny-tokenizer"
TINY_QWEN2_TOKENIZER = ASSETS / "tiny-qwen2-tokenizer"  # Qwen2's pre-tokenizer: "\n\n" is one id
N_MELS = 16


def load_script(name: str):
    """A module from scripts/ (not a package), e.g. load_script("aero_mini_v2")."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(tokenizer: Path = TINY_TOKENIZER, **overrides) -> AeroConfig:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    text = dict(
        model_type="qwen2",
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    audio = dict(
        model_type="qwen2_audio_encoder",
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        num_mel_bins=N_MELS,
    )
    text.update(overrides.pop("text", {}))
    audio.update(overrides.pop("audio", {}))
    return AeroConfig(
        text_config=text,
        audio_config=audio,
        audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"),
        **overrides,
    )


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

    return AeroProcessor(
        AutoTokenizer.from_pretrained(TINY_TOKENIZER),
        WhisperFeatureExtractor(feature_size=N_MELS),
        **kwargs,
    )


def tone(seconds: float, freq: float = 440.0, sr: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """A tone with a little noise: deterministic, non-silent test audio."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.shape)).astype(
        np.float32
    )


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


def write_manifest(
    root: Path, durations: list[float], name: str = "train.jsonl", texts: list[str] | None = None
) -> Path:
    """A reference-format JSONL manifest with one generated wav per sample, paths relative to
    root."""
    import soundfile as sf

    root.mkdir(parents=True, exist_ok=True)
    words = "the quick brown fox jumps over the lazy dog hello world".split()
    lines = []
    for i, seconds in enumerate(durations):
        audio = root / "audio" / f"clip{i}.wav"
        audio.parent.mkdir(exist_ok=True)
        sf.write(audio, tone(seconds, 200 + 40 * i, seed=i), SAMPLE_RATE)
        text = (
            texts[i] if texts else " ".join(words[(i + k) % len(words)] for k in range(3 + i % 4))
        )
        lines.append(
            json.dumps(
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "audio_url", "audio_url": {"url": f"audio/clip{i}.wav"}},
                                {"type": "text", "text": "Please transcribe the audio"},
                            ],
                        },
                        {"role": "assistant", "content": [{"type": "text", "text": text}]},
                    ]
                }
            )
        )
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path


# The chat template the published checkpoint ships in chat_template.json (the reference's default).
PUBLISHED_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}<|AUDIO|>\n"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_published_checkpoint(
    path: Path, seed: int = 0, aero: dict | None = None, **text_overrides
) -> Path:
    """A tiny random checkpoint laid out as the published conversion lays out lmms-lab/Aero-1-Audio.

    Qwen2 tokenizer with `<image>`, `<video>`, `<|AUDIO|>` added last; LM embeddings padded to a
    multiple of 64 and tied (`tie_word_embeddings: true`, no lm_head in the files); remote-code
    `auto_map` pointers in config.json, processor_config.json and tokenizer_config.json; the
    reference's chat template in chat_template.json; Whisper's preprocessor_config.json.
    `text_overrides` change the LM's config (vLLM's CPU attention needs head_dim >= 32), `aero`
    the model's own (a "ctc" connector).
    """
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    tok = AutoTokenizer.from_pretrained(TINY_QWEN2_TOKENIZER)
    tied = dict(tie_word_embeddings=True, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
    padded = -(-len(tok) // 64) * 64  # the published 151,668 entries -> 152,000 rows
    text = dict(vocab_size=padded, **tied, **text_overrides)
    config = tiny_config(TINY_QWEN2_TOKENIZER, text=text, tie_word_embeddings=True, **(aero or {}))
    torch.manual_seed(seed)
    model = AeroForConditionalGeneration(config).eval()
    with torch.no_grad():  # a larger logit spread keeps greedy choices away from ties
        model.get_input_embeddings().weight.mul_(20)
    model.save_pretrained(path)
    remote = {
        "AutoConfig": "configuration_aero.AeroConfig",
        "AutoModelForCausalLM": "modeling_aero.AeroForConditionalGeneration",
    }
    _update_json(
        path / "config.json", auto_map=remote, architectures=["AeroForConditionalGeneration"]
    )
    tok.save_pretrained(path)
    processor_remote = {"AutoProcessor": "processing_aero.AeroProcessor"}
    _update_json(
        path / "tokenizer_config.json", processor_class="AeroProcessor", auto_map=processor_remote
    )
    WhisperFeatureExtractor(feature_size=N_MELS).save_pretrained(path)
    (path / "processor_config.json").write_text(
        json.dumps(
            {
                "audio_token": "<|AUDIO|>",
                "auto_map": processor_remote,
                "processor_class": "AeroProcessor",
            },
            indent=2,
        )
    )
    (path / "chat_template.json").write_text(
        json.dumps({"chat_template": PUBLISHED_CHAT_TEMPLATE}, indent=2)
    )
    return path


def _update_json(path: Path, **entries) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **entries}, indent=2))


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    return make_published_checkpoint(tmp_path_factory.mktemp("published") / "Aero-1-Audio")
