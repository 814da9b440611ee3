"""The training loop: one process, or `torchrun` with FSDP2 (gloo on CPU, NCCL on GPU).

Notable choices:
- A step = `grad_accum` micro-batches. The loss is a sum of per-token (or per-sample) terms
  divided by the step's total number of terms over every micro-batch and every rank, so
  accumulation and sharding give the same gradient as one big batch.
- The data position is the number of batches consumed; resume fast-forwards the batch
  plan to it (cheap: plans are computed, not loaded), so prefetching workers cannot skew it.
- The encoder's frozen features run under no_grad-free autograd only when it trains.
- Metrics go to `metrics.jsonl` (and TensorBoard when installed); skipped samples to
  `skipped.jsonl`, with a running count in the metrics.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from aero.adapter import ADAPTER_FILENAME, apply_adapter, save_adapter
from aero.data.batching import BatchPlan
from aero.data.collate import Collator, TrainDataset
from aero.data.lengths import measured_dataset
from aero.processing import IGNORE_INDEX, count_audio_tokens_with
from aero.train import checkpoint as ckpt
from aero.train.config import ConfigError, TrainConfig, use_bf16
from aero.train.distributed import Distributed, shard
from aero.train.flops import flop_model
from aero.train.heldout import heldout_items
from aero.train.lineage import leg, lineage_metadata, projector_metadata
from aero.train.logs import JsonlLog, MetricsLog, due
from aero.train.presets import (
    apply_preset,
    carried_state,
    connector_depth,
    continue_from_adapter,
    emission_mode,
    lora_settings,
)
from aero.train.profiling import StepProfiler, record_function
from aero.train.schedule import cosine_schedule
from aero.train.step import TrainingModule

log = logging.getLogger(__name__)


def load_model_and_processor(name: str):
    from aero.modeling import AeroForConditionalGeneration
    from aero.processing import AeroProcessor

    if Path(name).is_dir():
        return AeroForConditionalGeneration.from_pretrained(name), AeroProcessor.from_pretrained(
            name
        )
    from aero.models import load

    return load(name)


def load_base(config: TrainConfig):
    """The run's base model and processor, its "ctc" connector as deep as the run needs
    (`connector_layers`, or the init adapter's depth) and emitting what the run reads
    (`ctc_emissions`): for training, and for the export's saved model."""
    model, processor = load_model_and_processor(config.model)
    layers = connector_depth(config)
    if layers and model.config.projector_type != "ctc":
        raise ConfigError(
            f"connector_layers is for a 'ctc' connector; {config.model} has a "
            f"{model.config.projector_type!r} projector."
        )
    if layers:
        model.grow_connector(layers)
    model.config.ctc_emissions = emission_mode(config, model.config)
    return model, processor


def choose_attention(model, device, packed: bool) -> str:
    """flash-attention 2 on CUDA when installed (varlen for packed rows); otherwise SDPA, with
    the per-sample loop for packed rows (see train/packed_attention.py)."""
    name = "sdpa"
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401

            name = "flash_attention_2"
        except ImportError:
            pass
    if name == "sdpa" and packed:
        from aero.train.packed_attention import register

        name = register()
    model.language_model.set_attn_implementation(name)
    return name


def loss_terms(batch: dict, mode: str) -> float:
    """How many loss terms a micro-batch adds (supervised tokens, or supervised samples)."""
    if "targets" not in batch:
        return 0.0
    supervised = batch["targets"] != IGNORE_INDEX
    if mode == "token":
        return float(supervised.sum())
    return float(batch["sample_ids"][supervised].unique().numel())


def _progress(enabled: bool, total: int, start: int):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("step {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        disable=not enabled,
    )
    task = progress.add_task("train", total=total, completed=start, info="")
    return progress, task


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class RunState:
    """Where a run stands; saved in every checkpoint (with the scheduler) and restored on resume."""

    step: int = 0  # optimizer steps taken
    consumed: int = 0  # micro-batches read from the plan (the data position)
    skipped: int = 0  # samples left out: unreadable at measuring or loading
    seen_samples: float = 0.0
    seen_tokens: float = 0.0


def train_lm(
    config: TrainConfig,
    model,
    processor,
    out: Path,
    dist: Distributed,
    stop_after: int | None = None,
) -> dict:
    """The LM objective (next-token loss on assistant tokens): `aero.train.run.train` calls this
    with the model loaded and the run folder made."""
    model, module, attention, flops = _prepare_model(config, model, dist)
    skips = JsonlLog(out / "skipped.jsonl", dist.is_main)
    # a "ctc" connector (frozen here): the collator takes its emissions, counted when the
    # sample's ids are built
    compressed = count_audio_tokens_with(model, processor)
    plan, dataset, collate, unreadable = _data_pipeline(config, processor, dist, skips, compressed)
    if dist.enabled:
        shard(module)
    optimizer, scheduler, params = _optimizer(config, module)
    state = _resume(config, out, module, optimizer, scheduler, RunState(skipped=unreadable))
    heldout = heldout_items(config.eval_data, config.eval_samples) if config.eval_data else None

    bf16 = use_bf16(config.bf16, dist.device.type)
    metrics = MetricsLog(out, dist.is_main)
    progress, task = _progress(config.progress and dist.is_main, config.max_steps, state.step)
    data = _batches(plan, dataset, collate, config, state.consumed)
    last_batch, steps_this_call, losses = None, 0, []
    started, timed_out = time.perf_counter(), False
    with progress, StepProfiler(out, config.profile_steps if dist.is_main else 0) as profiler:
        while state.step < config.max_steps:
            t0 = time.perf_counter()
            with record_function("aero.data"):
                micro, last_batch = _micro_batches(data, config, state, skips, dist, last_batch)
            loss, grad_norm = _optimizer_step(
                module, micro, config, dist, bf16, params, optimizer, scheduler
            )
            state.step += 1
            steps_this_call += 1
            losses.append(loss)
            record = _step_record(
                micro, state, dist, flops, loss, grad_norm, scheduler, time.perf_counter() - t0
            )
            record["attention"] = attention
            if due(state.step, config.save_every, config.max_steps):
                _save_checkpoint(out, state, module, optimizer, scheduler, config, dist)
            # after the checkpoint: a failing check costs its curve point, never the steps trained
            if (
                heldout
                and not dist.enabled
                and due(state.step, config.eval_every, config.max_steps)
            ):
                record.update(_heldout_point(model, processor, heldout, config, state.step))
            if config.peak_flops:
                peak = config.peak_flops * dist.world_size
                record["mfu"] = record["flops"] / record["step_s"] / peak
            if due(state.step, config.log_every, config.max_steps) or "heldout_wer" in record:
                metrics.write(record)
            progress.update(task, completed=state.step, info=_progress_info(record))
            profiler.step()
            if stop_after is not None and steps_this_call >= stop_after:
                break
            if timed_out := _clock_stops(config, started, dist):
                _save_checkpoint(out, state, module, optimizer, scheduler, config, dist)
                break
    metrics.close()

    summary = {
        "step": state.step,
        "losses": losses,
        "skipped": state.skipped,
        "seconds": time.perf_counter() - started,
    }
    if state.step >= config.max_steps or timed_out:
        export(module, model, processor, config, out, dist, state)
        summary["model_dir"] = str(out / "final" / "model")
        summary["adapter"] = str(out / "final" / ADAPTER_FILENAME)
    dist.close()
    return summary


def _clock_stops(config: TrainConfig, started: float, dist: Distributed) -> bool:
    """Whether `max_minutes` ends the run now; every rank stops at the same step (any rank
    whose clock ran out decides)."""
    return bool(config.max_minutes) and dist.sum(float(config.out_of_time(started))) > 0


def _progress_info(record: dict) -> str:
    info = f"loss {record['loss']:.4f} | {record['tokens_per_s']:.0f} tok/s"
    info += f" | pad {record['padding']:.1%}"
    return info + (f" | MFU {record['mfu']:.2f}" if "mfu" in record else "")


def _save_checkpoint(
    out: Path, state: RunState, module, optimizer, scheduler, config, dist
) -> None:
    """A resumable checkpoint: weights, optimizer, schedule and the run state (all ranks wait)."""
    trainer_state = {"scheduler": scheduler.state_dict(), **asdict(state)}
    ckpt.save_checkpoint(
        out, state.step, module, optimizer, trainer_state, config.keep_last, dist.is_main
    )
    dist.barrier()


def _prepare_model(config: TrainConfig, model, dist: Distributed):
    """The preset's trainable parts (LoRA, an adapter to continue from), on the device, in train
    mode."""
    lora = lora_settings(config) if config.preset == "lora" else None
    model = apply_preset(model, config.preset, config.train_audio_tower, lora)
    if config.init_adapter:
        continue_from_adapter(model, config.init_adapter, config.preset, lora)
    model.to(dist.device)
    model.train()
    attention = choose_attention(model, dist.device, packed=config.batching == "pack")
    module = TrainingModule(model, config.loss_chunk, config.loss_reduction)
    return model, module, attention, flop_model(model)


def _data_pipeline(
    config: TrainConfig, processor, dist: Distributed, skips: JsonlLog, compressed=None
):
    """Every dataset read and measured once (lengths cached per manifest) -> the batch plan, the
    dataset and the collator; samples that cannot be measured are logged and counted."""
    samples, lengths, sizes, unreadable = [], [], [], 0
    for spec in config.data:
        part, n, errors = measured_dataset(spec, processor, strict=config.strict_data)
        unreadable += len(errors)
        skips.write([{"stage": "length", "sample": k, "error": v} for k, v in errors.items()])
        samples += part
        lengths += n
        sizes.append(len(part))
    plan = BatchPlan(
        lengths,
        config.batching,
        config.batch_size_or_budget,
        sizes,
        [s.weight for s in config.data],
        seed=config.seed,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    dataset = TrainDataset(samples, processor, strict=config.strict_data)
    collate = Collator(
        processor,
        packed=config.batching == "pack",
        pad_audio_to_30s=config.pad_audio_to_30s,
        compressed=compressed,
    )
    return plan, dataset, collate, unreadable


def _optimizer(config: TrainConfig, module):
    """AdamW over the trainable parameters (the projector may have its own rate) + the schedule."""
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in trainable if "audio_modal_projector" not in n], "lr": config.lr},
        {
            "params": [p for n, p in trainable if "audio_modal_projector" in n],
            "lr": config.lr if config.projector_lr is None else config.projector_lr,
        },
    ]
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=config.lr,
        betas=config.betas,
        weight_decay=config.weight_decay,
    )
    scheduler = cosine_schedule(
        optimizer,
        config.warmup_steps,
        config.cosine_steps,
        config.min_lr_ratio,
        config.schedule_minutes,
    )
    return optimizer, scheduler, [p for _, p in trainable]


def _resume(
    config: TrainConfig, out: Path, module, optimizer, scheduler, fresh: RunState
) -> RunState:
    """The state of the last checkpoint (weights, optimizer and schedule loaded), or `fresh`."""
    if not (config.resume and ckpt.checkpoints(out)):
        return fresh
    saved = ckpt.load_checkpoint(ckpt.checkpoints(out)[-1], module, optimizer)
    scheduler.load_state_dict(saved["scheduler"])
    return RunState(
        saved["step"],
        saved["consumed"],
        saved["skipped"],
        saved.get("seen_samples", 0.0),
        saved.get("seen_tokens", 0.0),
    )


def _batches(plan: BatchPlan, dataset, collate, config: TrainConfig, consumed: int):
    """Batches from the data position `consumed` on (a fast-forward: plans are computed, nothing
    is loaded)."""
    plan.epoch, plan.position = 0, 0
    it = iter(plan)
    for _ in range(consumed):
        next(it)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=it,
        collate_fn=collate,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
    )
    yield from loader


def _micro_batches(
    data, config: TrainConfig, state: RunState, skips: JsonlLog, dist: Distributed, last_batch
):
    """One step's `grad_accum` micro-batches; samples that fail to load are logged and counted. An
    empty batch is dropped, or under torchrun repeated at weight 0 so every rank runs the step."""
    micro = []
    for _ in range(config.grad_accum):
        batch = next(data)
        state.consumed += 1
        if batch["errors"]:
            state.skipped += len(batch["errors"])
            skips.write(
                [{"stage": "load", "step": state.step, "error": msg} for msg in batch["errors"]]
            )
        if batch["n_samples"] == 0:
            if not dist.enabled:
                continue
            batch = {**last_batch, "_weight": 0.0}  # keep ranks in step with a zero-weight repeat
        last_batch = batch
        micro.append(batch)
    return micro, last_batch


def _optimizer_step(
    module,
    micro,
    config: TrainConfig,
    dist: Distributed,
    bf16: bool,
    params,
    optimizer,
    scheduler,
) -> tuple[float, torch.Tensor]:
    """Forward/backward every micro-batch, scaled by the step's loss terms over all ranks, then one
    clipped optimizer step. Returns the step's mean loss and the gradient norm."""
    terms = dist.sum(
        sum(loss_terms(b, config.loss_reduction) * b.get("_weight", 1.0) for b in micro)
    )
    loss_sum = 0.0
    for batch in micro:
        autocast = torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=bf16)
        with record_function("aero.forward"), autocast:
            total, _ = module(batch)
        scaled = total * batch.get("_weight", 1.0) * dist.world_size / max(terms, 1.0)
        with record_function("aero.backward"):
            scaled.backward()
        loss_sum += float(total.detach()) * batch.get("_weight", 1.0)
    with record_function("aero.optimizer"):
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return dist.sum(loss_sum) / max(terms, 1.0), grad_norm


def _step_record(
    micro,
    state: RunState,
    dist: Distributed,
    flops,
    loss: float,
    grad_norm,
    scheduler,
    elapsed: float,
) -> dict:
    """The metrics line of one step (counts summed over ranks; zero-weight repeats left out)."""
    real_batches = [b for b in micro if "_weight" not in b]

    def total(key: str) -> float:
        return dist.sum(sum(b.get(key, 0) for b in real_batches))

    real, slots, samples_now = total("n_tokens"), total("n_slots"), total("n_samples")
    step_flops = dist.sum(
        sum(
            flops.step_flops(
                b["seq_lens"], _window_positions(b), int((b["targets"] != IGNORE_INDEX).sum())
            )
            for b in real_batches
        )
    )
    state.seen_samples += samples_now
    state.seen_tokens += real
    record = {
        "step": state.step,
        "loss": loss,
        "lr": scheduler.get_last_lr()[0],
        "grad_norm": float(grad_norm),
        "tokens": real,
        "padding": 1 - real / max(slots, 1),
        "tokens_per_s": real / elapsed,
        "step_s": elapsed,
        "samples": samples_now,
        "samples_seen": state.seen_samples,
        "tokens_seen": state.seen_tokens,
        "skipped": state.skipped,
        "flops": step_flops,
        "consumed": state.consumed,
    }
    frames, frame_slots = total("audio_frames"), total("audio_frame_slots")
    if frame_slots:
        record["audio_padding"] = 1 - frames / frame_slots
    return record


def _heldout_point(model, processor, heldout, config: TrainConfig, step: int) -> dict:
    """The held-out WER at this step; a failure is logged and recorded, and training goes on."""
    from aero.train.heldout import heldout_wer

    try:
        return heldout_wer(model, processor, heldout, max_new_tokens=config.eval_max_new_tokens)
    except Exception as err:
        log.exception("The held-out check at step %d failed; training goes on", step)
        return {"heldout_error": f"{type(err).__name__}: {err}"}


def _window_positions(batch: dict) -> list[int]:
    if "audio_attention_mask" not in batch:
        return []
    from aero.audio import encoder_output_lengths

    return encoder_output_lengths(batch["audio_attention_mask"].sum(-1))[0].tolist()


def export(
    module, model, processor, config: TrainConfig, out: Path, dist: Distributed, state: RunState
) -> None:
    """`final/adapter.safetensors`: the trained weights only; `final/model`: base + adapter merged,
    a normal save_pretrained directory."""
    # Gathered full tensors, named as in the model (LoRA factors under peft's names).
    weights = {k.removeprefix("model."): v for k, v in ckpt.trainable_state(module).items()}
    weights |= carried_state(model)  # encoder layers an earlier CTC leg trained
    if not dist.is_main:
        return
    metadata = {
        "preset": config.preset,
        "train_audio_tower": config.train_audio_tower,
        "base_model": config.model,
    }
    if config.preset == "lora":
        metadata.update(lora_r=config.lora_r, lora_alpha=config.lora_alpha)
    this = leg(config, "lm", steps=state.step, samples=state.seen_samples, tokens=state.seen_tokens)
    metadata.update(projector_metadata(model.config), **lineage_metadata(config, this))
    save_adapter(out / "final" / ADAPTER_FILENAME, weights, metadata)
    # Rebuilt from the base rather than saved from the live model: sharded (FSDP) or LoRA-wrapped
    # parameters cannot be saved as a plain checkpoint, and this checks the adapter file itself.
    base, _ = load_base(config)
    apply_adapter(base, out / "final" / ADAPTER_FILENAME)
    base.save_pretrained(out / "final" / "model")
    processor.save_pretrained(out / "final" / "model")
