"""Adapters: the few trained weights of a run, in one safetensors file, applied without peft.

Notable choices:
- Plain entries are Aero parameters by name (e.g. `audio_modal_projector.linear.weight`) and
  replace the model's own. LoRA factors (`<module>.lora_A[.<name>].weight` and `lora_B`, as
  peft names them) are merged into the base weight: `W += lora_alpha / lora_r * B @ A`, so
  inference needs neither peft nor extra layers.
- The file's metadata holds `lora_alpha`, `lora_r`, the preset and the base model it was
  trained on: one file is the whole adapter.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

ADAPTER_FILENAME = "adapter.safetensors"


def save_adapter(path: str | os.PathLike, weights: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write trained weights (full Aero names, peft LoRA names) and string metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    save_file(tensors, path, metadata={"format": "pt", **{k: str(v) for k, v in metadata.items()}})
    return path


def convert_adapter(
    source: str | os.PathLike, target: str | os.PathLike, dtype: torch.dtype = torch.float16
) -> Path:
    """Copy an adapter file with its float tensors cast (float16 halves a shipped adapter's size;
    a connector's boolean vocabulary mask stays boolean)."""
    weights = {
        k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(source)).items()
    }
    return save_adapter(target, weights, adapter_metadata(source))


def adapter_metadata(path: str | os.PathLike) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def adapter_file(path: str | os.PathLike) -> Path:
    """An adapter file, or a run's `final/` directory holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / ADAPTER_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"No adapter file at {path}.")
    return path


def apply_adapter(model, path: str | os.PathLike) -> None:
    """Load an adapter file onto the model in place.

    Plain entries are Aero parameters by name (e.g. `audio_modal_projector.linear.weight`) and
    replace the model's own. LoRA factors (`<module>.lora_A[.<name>].weight` and `lora_B`, as
    peft names them) are merged: `W += lora_alpha / lora_r * B @ A`, with `lora_alpha` and
    `lora_r` read from the file's metadata. Merging here keeps peft out of inference.
    """
    path = adapter_file(path)
    metadata = adapter_metadata(path)
    weights = load_file(path)
    params = model.state_dict()
    plain: dict[str, torch.Tensor] = {}
    lora: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights.items():
        match = re.fullmatch(r"(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", name)
        if match:
            lora.setdefault(match[1], {})[match[2]] = tensor
        else:
            plain[name] = tensor
    unknown = sorted(set(plain) - set(params)) + sorted(
        f"{m}.weight" for m in lora if f"{m}.weight" not in params
    )
    if unknown:
        raise ValueError(
            f"The adapter {path} has weights this model does not have: {unknown[:5]}; "
            "it was made for another model."
        )
    model.load_state_dict(plain, strict=False)
    if not lora:
        return
    if "lora_alpha" not in metadata or "lora_r" not in metadata:
        raise ValueError(
            f"The adapter {path} has LoRA factors but no lora_alpha / lora_r in its metadata."
        )
    scale = float(metadata["lora_alpha"]) / float(metadata["lora_r"])
    with torch.no_grad():
        for module, factors in lora.items():
            if set(factors) != {"A", "B"}:
                raise ValueError(
                    f"The adapter {path} has only lora_{''.join(factors)} for {module}; "
                    "it needs both A and B."
                )
            weight = model.get_parameter(f"{module}.weight")
            weight += scale * (factors["B"].float() @ factors["A"].float()).to(weight.dtype)


def is_lora_entry(name: str) -> bool:
    return ".lora_" in name


def adapter_part(
    source: str | os.PathLike, target: str | os.PathLike, lora_from: str | os.PathLike | None = None
) -> Path:
    """A projector-only adapter from `source` (its LoRA factors left out, its metadata and lineage
    kept), or with `lora_from` the projector of `source` plus the LoRA factors (and LoRA settings)
    of another adapter: how a model trained in stages goes on with a newly trained projector."""
    weights = {
        k: v for k, v in load_file(str(adapter_file(source))).items() if not is_lora_entry(k)
    }
    metadata = {
        k: v
        for k, v in adapter_metadata(adapter_file(source)).items()
        if k not in ("lora_r", "lora_alpha", "format")
    }
    metadata["preset"] = "projector"
    if lora_from is not None:
        donor = adapter_file(lora_from)
        weights.update({k: v for k, v in load_file(str(donor)).items() if is_lora_entry(k)})
        theirs = adapter_metadata(donor)
        metadata.update(preset="lora", lora_r=theirs["lora_r"], lora_alpha=theirs["lora_alpha"])
    return save_adapter(target, weights, metadata)
