"""What trains (presets) and the small adapter a run exports.

Presets:
- projector: only `audio_modal_projector` (stage 1: align audio features to the LM).
- lora:      the projector + LoRA adapters on the LM's linear layers (via peft).
- full:      the projector + the whole LM.
`train_audio_tower` adds the encoder (its fixed position table stays frozen) to any preset.

An adapter directory holds `trainable.safetensors` (the trained weights, under the model's
own names) and `aero_adapter.json` (preset and LoRA settings); `apply_adapter` rebuilds the
same trainable structure on a base model, loads the weights and merges LoRA, giving a plain
`AeroForConditionalGeneration`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ADAPTER_CONFIG = "aero_adapter.json"
ADAPTER_WEIGHTS = "trainable.safetensors"


def lora_settings(config) -> dict:
    return {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout, "targets": config.lora_targets}


def apply_preset(model, preset: str, train_audio_tower: bool = False, lora: dict | None = None):
    """Freeze/unfreeze (and add LoRA) in place; returns the model to train (LoRA layers injected)."""
    model.requires_grad_(False)
    if preset == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        targets = "|".join(lora["targets"])
        peft_config = LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=rf".*language_model\..*\.({targets})$",
        )
        model = inject_adapter_in_model(peft_config, model)
        for name, p in model.named_parameters():
            p.requires_grad = "lora_" in name
    elif preset == "full":
        model.language_model.requires_grad_(True)
    elif preset != "projector":
        raise ValueError(f"Unknown preset {preset!r}: use projector, lora or full.")
    model.audio_modal_projector.requires_grad_(True)
    if train_audio_tower:
        model.audio_tower.requires_grad_(True)
        model.audio_tower.embed_positions.requires_grad_(False)
    return model


def merge_lora(model):
    """Fold LoRA adapters into their base weights and remove the LoRA layers."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            setattr(parent, name.rsplit(".", 1)[1], module.get_base_layer())
    return model


def save_adapter(directory: str | Path, weights: dict[str, torch.Tensor], preset: str, train_audio_tower: bool,
                 lora: dict | None, base_model: str) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    meta = {"preset": preset, "train_audio_tower": train_audio_tower, "lora": lora if preset == "lora" else None,
            "base_model": base_model}
    (directory / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")


def apply_adapter(model, directory: str | Path, merge: bool = True):
    """Load an exported adapter onto its base model (in place); LoRA is merged unless merge=False."""
    directory = Path(directory)
    meta_path = directory / ADAPTER_CONFIG
    if not meta_path.is_file():
        raise FileNotFoundError(f"{directory} is not an aero adapter: {ADAPTER_CONFIG} is missing.")
    meta = json.loads(meta_path.read_text())
    model = apply_preset(model, meta["preset"], meta["train_audio_tower"], meta.get("lora"))
    weights = load_file(directory / ADAPTER_WEIGHTS)
    missing = [k for k in weights if k not in dict(model.named_parameters())]
    if missing:
        raise ValueError(f"Adapter {directory} does not fit this model: unknown weights {missing[:3]}.")
    model.load_state_dict(weights, strict=False)
    if merge and meta["preset"] == "lora":
        model = merge_lora(model)
    model.requires_grad_(False)
    return model
