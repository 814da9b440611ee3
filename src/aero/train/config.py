"""Training configuration: a typed dataclass, a YAML file of overrides, `key=value` on the CLI.

A YAML file holds only what differs from the defaults below; unknown keys are errors that
name the key, so a typo never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aero.data.manifest import DatasetSpec

PRESETS = ("projector", "lora", "full")


class ConfigError(ValueError):
    """A configuration the user must fix; the message names the key or file."""


@dataclass
class TrainConfig:
    model: str = ""  # checkpoint directory (model + processor), or a name aero.models.load knows
    output_dir: str = "runs/aero"
    data: list[DatasetSpec] = field(default_factory=list)
    strict_data: bool = False  # fail on an unreadable sample instead of skipping and counting it

    # What trains.
    # lm (next-token loss through the LM) | ctc (projector alignment, no LM; train/align.py)
    objective: str = "lm"
    init_adapter: str | None = (
        None  # start from an earlier run's adapter (a ctc stage's projector, or a whole LoRA run)
    )
    preset: str = "projector"  # projector (stage 1) | lora (projector + LoRA on the LM) | full
    train_audio_tower: bool = False
    # projector_type "ctc": what the LM reads per CTC emission, "mix" or "argmax"
    # (AeroConfig.ctc_emissions; None: the init adapter's, else the model's)
    ctc_emissions: str | None = None
    # objective ctc: weight of the penalty that keeps the frames' norms near the embeddings'
    # (what "mix" emissions are made of; "argmax" emissions read only the argmax)
    ctc_norm_penalty: float = 0.1
    # projector_type "ctc": deepen the connector to this many transformer layers (the new ones
    # start as the identity); an init adapter trained deeper sets its own depth
    connector_layers: int | None = None
    # objective ctc: also train the encoder's top N transformer layers and its final norm, at
    # `encoder_lr` (None: `lr`); they are exported with the connector and later runs carry them
    encoder_layers: int = 0
    encoder_lr: float | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )

    # Batching.
    batching: str = "pack"  # pack | budget (dynamic batch size) | fixed
    pack_length: int = 8192  # tokens per packed row (pack)
    token_budget: int = 8192  # padded tokens per batch (budget)
    batch_size: int = 8  # samples per batch (fixed)
    grad_accum: int = 1
    num_workers: int = 0
    # torch.profiler over this many steps (after 3): OUTPUT_DIR/profile.txt (aero.train.profiling)
    profile_steps: int = 0
    pad_audio_to_30s: bool = False  # the reference's encoder padding, for comparisons only

    # Optimisation.
    max_steps: int = 100
    # wall-clock budget of one call: when it runs out the run saves and exports as at max_steps
    # (the cosine still spans max_steps); a rerun continues from that checkpoint
    max_minutes: float | None = None
    lr: float = 1e-3
    projector_lr: float | None = None  # the projector's own learning rate (None: `lr`)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    schedule_steps: int | None = (
        None  # the cosine's length if not max_steps (a run stopped before its schedule ends)
    )
    # the cosine spans this many minutes of one call instead of steps (a run whose speed is not
    # known ahead, e.g. on a lent GPU; set max_minutes too); its lineage records the steps it ran
    schedule_minutes: float | None = None
    max_grad_norm: float = 1.0
    loss_reduction: str = "token"  # token | sample
    loss_chunk: int = 4096
    seed: int = 0
    # None: bf16 autocast where its matmuls are native (CUDA; a CPU with AVX512-BF16 or AMX),
    # else fp32 (`use_bf16`)
    bf16: bool | None = None

    # Checkpoints and logs.
    save_every: int = 50
    keep_last: int = 3
    log_every: int = 1
    resume: bool = True  # continue from the newest checkpoint in output_dir if there is one
    peak_flops: float | None = None  # device peak FLOP/s for MFU (H100 bf16: 989e12)
    eval_data: str | None = None  # a held-out manifest: greedy WER every `eval_every` steps
    eval_every: int = 500
    eval_samples: int = 32  # the first N rows of eval_data
    eval_max_new_tokens: int = 128
    progress: bool = True

    def validate(self) -> "TrainConfig":
        if not self.model:
            raise ConfigError("Set `model`: a checkpoint directory or a known model name.")
        if not self.data:
            raise ConfigError("Set `data`: a list of datasets ({path, root, weight}).")
        if self.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, not {self.preset!r}.")
        if self.objective not in ("lm", "ctc"):
            raise ConfigError(f"objective must be lm or ctc, not {self.objective!r}.")
        if self.ctc_emissions not in (None, "mix", "argmax"):
            raise ConfigError(f"ctc_emissions must be mix or argmax, not {self.ctc_emissions!r}.")
        if self.batching not in ("pack", "budget", "fixed"):
            raise ConfigError(f"batching must be pack, budget or fixed, not {self.batching!r}.")
        if self.loss_reduction not in ("token", "sample"):
            raise ConfigError(
                f"loss_reduction must be token or sample, not {self.loss_reduction!r}."
            )
        for name in (
            "max_steps",
            "grad_accum",
            "pack_length",
            "token_budget",
            "batch_size",
            "keep_last",
            "save_every",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.ctc_norm_penalty < 0:
            raise ConfigError(f"ctc_norm_penalty must be >= 0, got {self.ctc_norm_penalty}.")
        if self.connector_layers is not None and self.connector_layers <= 0:
            raise ConfigError(f"connector_layers must be positive, got {self.connector_layers}.")
        if self.encoder_layers < 0:
            raise ConfigError(f"encoder_layers must be >= 0, got {self.encoder_layers}.")
        if self.encoder_layers and self.objective != "ctc":
            raise ConfigError(
                "encoder_layers is for objective ctc; an lm run trains the whole encoder with "
                "train_audio_tower."
            )
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"max_minutes must be positive, got {self.max_minutes}.")
        if self.profile_steps < 0:
            raise ConfigError(f"profile_steps must be >= 0, got {self.profile_steps}.")
        if self.schedule_minutes is not None and self.schedule_minutes <= 0:
            raise ConfigError(f"schedule_minutes must be positive, got {self.schedule_minutes}.")
        if self.schedule_steps is not None and self.schedule_steps < self.max_steps:
            raise ConfigError(
                f"schedule_steps ({self.schedule_steps}) "
                f"must be at least max_steps ({self.max_steps}): "
                "it sets how long the cosine is, and a run ends at max_steps."
            )
        return self

    def out_of_time(self, started: float) -> bool:
        """Whether this call's `max_minutes` has run out since `started` (time.perf_counter())."""
        budget = self.max_minutes
        return budget is not None and time.perf_counter() - started > budget * 60

    @property
    def cosine_steps(self) -> int:
        return self.schedule_steps or self.max_steps

    @property
    def batch_size_or_budget(self) -> int:
        return {"pack": self.pack_length, "budget": self.token_budget, "fixed": self.batch_size}[
            self.batching
        ]


def _coerce(name: str, value: Any, current: Any) -> Any:
    if name == "data":
        if not isinstance(value, list):
            raise ConfigError("`data` must be a list of datasets.")
        specs = []
        for entry in value:
            entry = {"path": entry} if isinstance(entry, str) else entry
            unknown = set(entry) - {f.name for f in dataclasses.fields(DatasetSpec)}
            if unknown:
                raise ConfigError(f"Unknown dataset key(s) {sorted(unknown)} in `data`.")
            tasks = entry.get("tasks")
            if tasks is not None and (
                not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks)
            ):
                raise ConfigError(f"`tasks` of {entry['path']} must be a list of task names.")
            specs.append(DatasetSpec(**entry))
        return specs
    if name == "betas":
        return tuple(float(v) for v in value)
    if isinstance(current, bool) or current is None:
        return value
    if (
        isinstance(current, (int, float))
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    ):
        return type(current)(value)
    return value


def apply_overrides(config: TrainConfig, values: dict) -> TrainConfig:
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"Unknown config key {key!r}; known keys: {', '.join(sorted(known))}."
            )
        setattr(config, key, _coerce(key, value, getattr(config, key)))
    return config


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Defaults <- YAML file <- `key=value` overrides (values parsed as YAML scalars/lists)."""
    config = TrainConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist.")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"Config file {path} is not valid YAML: {err}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"Config file {path} must hold a mapping of keys to values.")
        apply_overrides(config, values)
        # A relative data path is taken from the working directory, or else from the YAML
        # file's folder when it exists there.
        for spec in config.data:
            for attr in ("path", "root"):
                value = getattr(spec, attr)
                if value and not Path(value).is_absolute() and not Path(value).exists():
                    if (path.parent / value).exists():
                        setattr(spec, attr, str(path.parent / value))
    parsed = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} must look like key=value.")
        key, value = item.split("=", 1)
        parsed[key.strip()] = yaml.safe_load(value)
    apply_overrides(config, parsed)
    return config


def to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def use_bf16(flag: bool | None, device_type: str) -> bool:
    """Whether a stage autocasts to bf16: `flag` when the config sets it, else where bf16 matmuls
    are native. An AVX2-only CPU emulates them: a (512 x 576) @ (576 x 16417) product took 1.17 s
    in bf16 and 0.30 s in fp32 on one core of session 12's AMD EPYC, 450 s for one connector
    step that an AVX512-BF16 machine ran in ~10 s."""
    if flag is not None:
        return bool(flag)
    if device_type == "cuda":
        return True
    if device_type != "cpu":
        return False
    import torch

    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
