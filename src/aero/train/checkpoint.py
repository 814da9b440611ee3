"""Checkpoints that survive a crash: atomic, rotated, complete enough to resume bit-for-bit.

Layout of `OUTPUT/checkpoints/step-00000042/`:
  trainable.safetensors   the trainable weights only (full names; the frozen rest is the base)
  optimizer.pt            optimizer state keyed by parameter name (works across FSDP layouts)
  trainer.pt              scheduler state, data position, RNG states of python/numpy/torch
  state.json              step and the readable part of the trainer state

A checkpoint is written to `.tmp-step-...` and renamed into place, so a crash mid-write
leaves the previous checkpoint intact; only the newest `keep_last` are kept.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def trainable_names(model: torch.nn.Module) -> set[str]:
    """The trainable parameters, and the persistent buffers of the modules that own them (a
    trained "ctc" connector's `vocab_mask` belongs with its weights)."""
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    for prefix, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            names |= {
                f"{prefix}.{name}" if prefix else name
                for name, _ in module.named_buffers(recurse=False)
                if name not in module._non_persistent_buffers_set
            }
    return names


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full (gathered) tensors of the trainable parameters; collective under FSDP."""
    names = trainable_names(model)
    full = get_model_state_dict(model, options=FULL)
    return {k: v.contiguous() for k, v in full.items() if k in names}


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(output_dir: str | Path) -> list[Path]:
    root = Path(output_dir) / "checkpoints"
    return sorted(root.glob("step-*")) if root.is_dir() else []


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model,
    optimizer,
    trainer_state: dict,
    keep_last: int,
    is_main: bool,
) -> Path | None:
    """Collective under FSDP (every rank calls it); rank 0 writes."""
    weights = trainable_state(model)
    optim = get_optimizer_state_dict(model, optimizer, options=FULL)
    if not is_main:
        return None
    root = Path(output_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(weights, tmp / "trainable.safetensors", metadata={"format": "pt"})
    torch.save(optim, tmp / "optimizer.pt")
    torch.save({**trainer_state, "rng": rng_state()}, tmp / "trainer.pt")
    readable = {
        k: v for k, v in trainer_state.items() if isinstance(v, (int, float, str, dict, list))
    }
    (tmp / "state.json").write_text(json.dumps({"step": step, **readable}, indent=2, default=str))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, model, optimizer) -> dict:
    """Restore weights, optimizer and RNG; returns the trainer state. Every rank calls it."""
    path = Path(path)
    weights = load_file(path / "trainable.safetensors")
    expected = trainable_names(model)
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights))[:3], sorted(set(weights) - expected)[:3]
        raise ValueError(
            f"Checkpoint {path} was written for other trainable weights "
            f"(missing {missing}, extra {extra}); "
            "resume with the same preset, or start a new output_dir."
        )
    set_model_state_dict(
        model, weights, options=StateDictOptions(full_state_dict=True, strict=False)
    )
    optim = torch.load(path / "optimizer.pt", weights_only=False)
    set_optimizer_state_dict(
        model, optimizer, optim, options=StateDictOptions(full_state_dict=True)
    )
    state = torch.load(path / "trainer.pt", weights_only=False)
    set_rng_state(state.pop("rng"))
    return state
