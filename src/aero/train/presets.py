"""What trains: presets that freeze, unfreeze and add LoRA.

- projector: only `audio_modal_projector` (stage 1: align audio features to the LM).
- lora:      the projector + LoRA adapters on the LM's linear layers (via peft).
- full:      the projector + the whole LM.
`train_audio_tower` adds the encoder (its fixed position table stays frozen) to any preset.
A run exports its trained weights as one adapter file (`aero.adapter`); `continue_from_adapter`
starts a run from an earlier one's file so that the new export is complete again.
"""

from __future__ import annotations

import torch

from aero.adapter import adapter_file, adapter_metadata


def lora_settings(config) -> dict:
    return {
        "r": config.lora_r,
        "alpha": config.lora_alpha,
        "dropout": config.lora_dropout,
        "targets": config.lora_targets,
    }


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


def continue_from_adapter(model, path, preset: str, lora: dict | None) -> None:
    """Start an LM-objective run from an earlier run's adapter (`init_adapter`), after
    `apply_preset`.

    Its weights are loaded into the parameters this run trains, LoRA factors into the fresh LoRA
    layers (same rank, alpha and targets), so the run's exported adapter is again complete on the
    base model. Under the `full` preset its LoRA is merged into the LM, which the export holds
    whole. Encoder weights the run does not train (layers an earlier CTC leg trained) are loaded
    and carried into its export unchanged (`carried_state`). Anything else the export would
    silently drop is a ConfigError instead.
    """
    from safetensors.torch import load_file

    from aero.adapter import apply_adapter
    from aero.train.checkpoint import trainable_names
    from aero.train.config import ConfigError

    path = adapter_file(path)
    weights = load_file(str(path))
    has_lora = any(".lora_" in name for name in weights)
    carried = model.__dict__.setdefault("carried_weights", set())
    if has_lora and preset == "full":
        apply_adapter(model, path)  # merged into the LM weights, which this run trains and exports
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        carried |= {n for n in weights if n.startswith("audio_tower.") and n in frozen}
        return
    if has_lora and preset != "lora":
        raise ConfigError(
            f"init_adapter {path} holds LoRA factors, which a {preset!r} run would not export: "
            "use preset lora (same lora_r, lora_alpha, lora_targets) or full."
        )
    if has_lora:
        metadata = adapter_metadata(path)
        theirs = (metadata.get("lora_r"), metadata.get("lora_alpha"))
        if theirs != (str(lora["r"]), str(lora["alpha"])):
            raise ConfigError(
                f"init_adapter {path} has LoRA r={theirs[0]}, alpha={theirs[1]}; this run has "
                f"lora_r={lora['r']}, lora_alpha={lora['alpha']}: set them to match."
            )
    params = dict(model.named_parameters())
    # the persistent buffers of trained modules travel with their weights (a connector's vocab)
    kept = trainable_names(model)
    buffers = {name: b for name, b in model.named_buffers() if name in kept}
    for name, tensor in list(weights.items()):
        if name in buffers:
            buffers[name].copy_(weights.pop(name).to(buffers[name].dtype))
            continue
        if name not in params:
            hint = " (set lora_targets to the ones it was trained with)" if ".lora_" in name else ""
            raise ConfigError(
                f"init_adapter {path} has {name}, which this model does not have{hint}."
            )
        if not params[name].requires_grad and name.startswith("audio_tower."):
            carried.add(name)  # an encoder layer an earlier leg trained: loaded, exported as is
        elif not params[name].requires_grad:
            raise ConfigError(
                f"init_adapter {path} has {name}, which this run does not train, so its export "
                "would lose it (train_audio_tower or preset differ from the earlier run)."
            )
        if params[name].shape != tensor.shape:
            raise ConfigError(
                f"init_adapter {path}: {name} has shape {tuple(tensor.shape)}, the model "
                f"{tuple(params[name].shape)}."
            )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].dtype))


def emission_mode(config, model_config) -> str:
    """What a "ctc" connector hands the LM in this run (`ctc_emissions`): the config's choice,
    else the one the init adapter was trained with, else the model's."""
    if config.ctc_emissions:
        return config.ctc_emissions
    if config.init_adapter:
        recorded = adapter_metadata(adapter_file(config.init_adapter)).get("ctc_emissions")
        if recorded:
            return recorded
    return model_config.ctc_emissions


def connector_depth(config) -> int | None:
    """How many transformer layers a "ctc" connector needs in this run: the config's
    `connector_layers`, or more if the init adapter was trained with more; None: as built."""
    depths = [config.connector_layers] if config.connector_layers else []
    if config.init_adapter:
        metadata = adapter_metadata(adapter_file(config.init_adapter))
        if metadata.get("projector_type") == "ctc" and metadata.get("connector_layers"):
            depths.append(int(metadata["connector_layers"]))
    return max(depths) if depths else None


def carried_state(model) -> dict[str, torch.Tensor]:
    """The frozen weights this run loaded from its init adapter and exports unchanged (encoder
    layers an earlier CTC leg trained), by name."""
    names = model.__dict__.get("carried_weights", set())
    return {name: model.get_parameter(name).detach() for name in sorted(names)}
