"""What trains: presets that freeze, unfreeze and add LoRA.

- projector: only `audio_modal_projector` (stage 1: align audio features to the LM).
- lora:      the projector + LoRA adapters on the LM's linear layers (via peft).
- full:      the projector + the whole LM.
`train_audio_tower` adds the encoder (its fixed position table stays frozen) to any preset.
A run exports its trained weights as one adapter file (`aero.adapter`).
"""

from __future__ import annotations


def lora_settings(config) -> dict:
    return {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout, "targets": config.lora_targets}


def apply_preset(model, preset: str, train_audio_tower: bool = False, lora: dict | None = None):
    """Freeze/unfreeze (and inject LoRA layers) in place; returns the model."""
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
