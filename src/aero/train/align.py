"""Alignment stage: teach the projector to speak the LM's embedding language, without the LM.

`objective: ctc` trains the projector (with `encoder_layers: N` also the encoder's top N
layers; the rest of the encoder frozen, computed without a graph) with a CTC loss whose classes
are the LM's own token embeddings plus one learned blank: the logit of token v at audio token t
is `scale * <h_t, E_v>`. Transcription samples only (one audio, the assistant turn is the
transcript). Each step costs an encoder forward and one (N, H) x (H, V) product, no LM forward
or backward (aero-mini on 2 cores: 41x real time, vs 18x for the LM stage), and its loss is
the alignment itself; its output initialises that stage (`init_adapter`), whose LM then starts
from audio tokens that already point at the words.

Notable choices:
- A penalty keeps the projected vectors' norms near the median norm of the LM's embedding
  rows, so they enter the LM at the scale its inputs have (CTC alone leaves the norm free).
- Greedy CTC decoding of each batch before its update gives a running WER at no cost; the
  held-out manifest is decoded the same way every `eval_every` steps.
- State (projector, blank, scale, optimizer, step, data position) is saved atomically every
  `save_every` steps to `ctc_state.pt`; rerunning the command resumes from it. The result is
  `final/adapter.safetensors` (preset `projector`: the projector's weights, and any encoder
  layers trained here or by an earlier leg).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from aero.adapter import ADAPTER_FILENAME, save_adapter
from aero.audio import (
    AudioError,
    audio_tokens_per_second,
    load_audio,
    split_windows,
    window_tokens,
)
from aero.data.manifest import (
    DatasetSpec,
    ManifestError,
    Sample,
    read_dataset,
    with_resolved_audio,
)
from aero.modeling import CtcConnector
from aero.processing import content_text, is_audio_part
from aero.train.config import use_bf16
from aero.train.distributed import training_device
from aero.train.lineage import leg, lineage_metadata, projector_metadata
from aero.train.logs import JsonlLog, due
from aero.train.presets import carried_state
from aero.train.profiling import StepProfiler, record_function
from aero.train.schedule import cosine_schedule

TRANSCRIPTION_TASKS = ("transcribe", "long")
LOGIT_CHUNK = 2048  # frames per piece of the frames-by-table product (CTC normaliser)


def transcription_pair(sample: Sample) -> tuple[str, str] | None:
    """(audio path, transcript) when the sample is a transcription, else None.

    A row with a `task` field counts when the task is a transcription task; a row without one
    counts when it has exactly one audio part and one assistant reply of text."""
    task = sample.extra.get("task")
    if task is not None and task not in TRANSCRIPTION_TASKS:
        return None
    messages = with_resolved_audio(sample)
    audio = [
        p["audio"]
        for m in messages
        if isinstance(m["content"], list)
        for p in m["content"]
        if is_audio_part(p)
    ]
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    if len(audio) != 1 or len(replies) != 1:
        return None
    text = content_text(replies[0]).strip()
    return (audio[0], text) if text else None


class CTCHead(nn.Module):
    """Logits over the LM vocabulary + blank, from dot products with the frozen embeddings.

    With `connector` (a "ctc" projector, which carries its own blank and scale for inference)
    the head uses that module's parameters, so they are trained and exported with it."""

    def __init__(self, embeddings: torch.Tensor, connector: nn.Module | None = None):
        super().__init__()
        # token id -> class (None: every token is its own class); the connector's head emits
        # only the tokens of its `vocab_mask`, in id order
        self.tokens = self.to_class = None
        if connector is not None:
            self.tokens = connector.vocab_mask[: embeddings.shape[0]].nonzero()[:, 0]
            self.to_class = torch.full(
                (embeddings.shape[0],), -1, dtype=torch.long, device=self.tokens.device
            )
            self.to_class[self.tokens] = torch.arange(len(self.tokens), device=self.tokens.device)
            embeddings = embeddings[self.tokens]
        self.register_buffer("embeddings", embeddings.detach().float(), persistent=False)
        norms = self.embeddings.norm(dim=-1)
        self.reference_norm = float(norms.median())
        if connector is not None:
            self._owner = [connector]  # a list: not a submodule, its parameters stay its own
            if not connector.blank.any():  # a fresh connector (not one trained before)
                with torch.no_grad():
                    connector.blank.normal_(0, self.reference_norm / embeddings.shape[1] ** 0.5)
            return
        self.blank = nn.Parameter(
            torch.randn(embeddings.shape[1]) * self.reference_norm / embeddings.shape[1] ** 0.5
        )
        self.log_scale = nn.Parameter(torch.tensor(0.0))

    def __getattr__(self, name: str):
        if name in ("blank", "log_scale") and "_owner" in self.__dict__:
            return getattr(self.__dict__["_owner"][0], name)
        return super().__getattr__(name)

    @property
    def blank_index(self) -> int:
        return self.embeddings.shape[0]

    def table(self) -> torch.Tensor:
        """(S + 1, H): the emittable embeddings, then the blank."""
        return torch.cat([self.embeddings, self.blank[None].float()])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(n, H) -> (n, S + 1) logits, the blank last. The scale multiplies the n x H frames
        rather than the n x (S + 1) logits (S is thousands of tokens)."""
        return (h.float() * self.log_scale.exp()) @ self.table().T

    def best(self, projected: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each recording's most likely class per frame."""
        return [self(p).argmax(-1) for p in projected]

    def classes(self, ids: list[int]) -> list[int]:
        """Token ids -> class indices (tokens the head cannot emit are left out)."""
        if self.to_class is None:
            return ids
        return [c for c in self.to_class[ids].tolist() if c >= 0]

    def ids(self, classes: list[int]) -> list[int]:
        return classes if self.tokens is None else self.tokens[classes].tolist()

    def norm_penalty(self, h: torch.Tensor) -> torch.Tensor:
        return ((h.float().norm(dim=-1) / self.reference_norm - 1) ** 2).mean()


class _RowLogSumExp(torch.autograd.Function):
    """(N, H) frames, (C, H) table -> per frame the log of the sum of exp(frame . row) over the
    table, and the row with the largest product; chunk by chunk, forward and backward, so the
    (N, C) logits (a batch's frames times thousands of tokens) are never held or walked whole."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, table: torch.Tensor, chunk: int):
        norms, best = [], []
        for start in range(0, h.shape[0], chunk):
            logits = (h[start : start + chunk] @ table.T).float()
            norms.append(torch.logsumexp(logits, -1))
            best.append(logits.argmax(-1))
        norm = torch.cat(norms) if norms else h.new_zeros(0, dtype=torch.float32)
        ctx.save_for_backward(h, table, norm)
        ctx.chunk = chunk
        best = torch.cat(best) if best else torch.zeros(0, dtype=torch.long)
        ctx.mark_non_differentiable(best)
        return norm, best

    @staticmethod
    def backward(ctx, grad_norm: torch.Tensor, _):
        h, table, norm = ctx.saved_tensors
        grad_h, grad_table = torch.empty_like(h), torch.zeros_like(table, dtype=torch.float32)
        for start in range(0, h.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            # d norm / d logits is the softmax over the table
            weights = torch.exp((h[rows] @ table.T).float() - norm[rows, None])
            weights = (weights * grad_norm[rows, None]).to(h.dtype)
            grad_h[rows] = weights @ table
            grad_table += (weights.T @ h[rows]).float()
        return grad_h, grad_table.to(table.dtype), None


def _gathered_ctc(log_probs: torch.Tensor, target: list[int]) -> torch.Tensor:
    """CTC of one recording over gathered columns (blank = column 0, the targets' tokens after
    it; (T, C) log-probabilities normalised over the whole vocabulary, not over these columns)."""
    ctc = nn.functional.ctc_loss(
        log_probs[:, None],
        torch.tensor([target], dtype=torch.long, device=log_probs.device),
        torch.tensor([log_probs.shape[0]]),
        torch.tensor([len(target)]),
        blank=0,
        reduction="sum",
        zero_infinity=True,
    )
    # PyTorch's CTC backward assumes its input is normalised over the class axis (its gradient
    # carries an exp(log_prob) term that cancels only then). The gathered columns are not, so
    # that term is removed here: value unchanged, gradient = the full-vocabulary one.
    spurious = (log_probs.detach().exp() * log_probs).sum()
    return ctc - (spurious - spurious.detach())


def greedy_ctc(best: torch.Tensor, blank: int) -> list[int]:
    """Most likely class per frame -> the emitted classes (repeats merged, blanks dropped)."""
    out, previous = [], None
    for token in best.tolist():
        if token != previous and token != blank:
            out.append(token)
        previous = token
    return out


def _batches(lengths: list[int], budget: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled batches of up to `budget` estimated tokens (at least one sample each)."""
    order = list(range(len(lengths)))
    random.Random(seed * 1000 + epoch).shuffle(order)
    batches, current, size = [], [], 0
    for i in order:
        if current and size + lengths[i] > budget:
            batches.append(current)
            current, size = [], 0
        current.append(i)
        size += lengths[i]
    if current:
        batches.append(current)
    return batches


def ctc_batch_loss(
    head: CTCHead, projected: list[torch.Tensor], targets: list[list[int]], dtype=torch.float32
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """CTC of a batch, per target token, over the whole vocabulary -> (loss, the most likely
    class per frame of each recording). `projected`: (T_i, H) frames per recording; `targets`:
    class indices; `dtype`: the precision of the frames-by-table products."""
    sizes = [p.shape[0] for p in projected]
    # the whole batch's frames against the table at once, in the stage's precision (bf16
    # where set: ~4x float32 on a CPU with AVX512-BF16), the sums in float32
    frames = (torch.cat(projected).float() * head.log_scale.exp()).to(dtype)
    table = head.table().to(dtype)
    log_norm, best = _RowLogSumExp.apply(frames, table, LOGIT_CHUNK)
    # CTC reads only the blank's and the targets' log-probabilities: normalise over the whole
    # vocabulary, then keep those columns (blank first), one recording at a time, so no
    # recording is padded to the batch's longest or to its largest set of tokens. A token
    # repeated in a transcript keeps one column, so CTC still needs a blank between its
    # repeats, as over the full vocabulary.
    uniques = [list(dict.fromkeys(ids)) for ids in targets]
    columns = [[head.blank_index] + u for u in uniques]
    rows = table[torch.tensor([c for cols in columns for c in cols], device=table.device)]
    total = max(sum(len(ids) for ids in targets), 1)
    ctc = frames.new_zeros((), dtype=torch.float32)
    offset = 0
    for f, z, ids, u in zip(frames.split(sizes), log_norm.split(sizes), targets, uniques):
        own = rows[offset : offset + len(u) + 1]
        offset += len(u) + 1
        log_probs = (f @ own.T).float() - z[:, None]  # (T_i, 1 + unique targets)
        column = {t: k + 1 for k, t in enumerate(u)}
        ctc = ctc + _gathered_ctc(log_probs, [column[t] for t in ids])
    ctc = ctc / total
    return ctc, best.split(sizes)


class _Stage:
    def __init__(self, model, processor, config):
        self.model, self.processor, self.config = model, processor, config
        projector = model.audio_modal_projector
        self.connector = projector if isinstance(projector, CtcConnector) else None
        self.device = model.get_input_embeddings().weight.device
        self.head = CTCHead(model.get_input_embeddings().weight, self.connector).to(self.device)
        bf16 = use_bf16(config.bf16, self.device.type)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)
        self.dtype = torch.bfloat16 if bf16 else torch.float32

    def forward(self, pairs: list[tuple[str, str]], failed: list | None = None):
        """Per readable sample: projected audio (n_i, H), target ids, reference text. Unreadable
        audio raises, or with `failed` given is appended there as (path, error) and left out."""
        batch = load_batch(self.processor, pairs, strict=failed is None)
        if failed is not None:
            failed += batch.failed
        return self.compute(batch)

    def compute(self, batch: LoadedBatch):
        """`forward` of a batch `load_batch` read (in a data-loader worker, or just now)."""
        if not batch.pairs:
            return [], [], []
        projected = self.project_recordings(batch.features, batch.per_audio)
        targets = [
            self.head.classes(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
            for _, text in batch.pairs
        ]
        return projected, targets, [text for _, text in batch.pairs]

    def project_recordings(self, features: tuple, per_audio: list[int]) -> list[torch.Tensor]:
        """The (log-mel, mask) features of several recordings' 30 s windows (`per_audio` of them
        each, in order) -> one (n_i, H) tensor of per-frame vectors per recording."""
        values, mask = features
        # the encoder's trained top layers (`encoder_layers`) keep their graph; the frozen ones
        # below take no gradient, so autograd records nothing there
        grad = torch.is_grad_enabled() and bool(trained_encoder(self.model))
        with torch.set_grad_enabled(grad), self.autocast:
            encoded = self.model.encode_windows(values.to(self.device), mask.to(self.device))
        with self.autocast:
            frames = self.project([e.float() for e in encoded])
        projected, start = [], 0
        for n in per_audio:
            projected.append(torch.cat(frames[start : start + n]).float())
            start += n
        return projected

    def project(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        """Encoder windows -> per window the (n_i, H) per-frame vectors the CTC loss reads (the
        "ctc" connector's uncompressed frames). A batch's windows go through the connector
        together, in groups of similar length (it attends within each window): 89 clips took
        2.0x less connector time on 2 CPU cores than one call per recording
        (`benchmarks/ctc_loss.py --connector`), and a GPU launches far fewer kernels."""
        if self.connector is None:
            return self.model.project_windows(windows)
        return self.connector.frames(self.model.stack_frames(windows))

    def loss(self, projected, targets, penalty_weight: float):
        """CTC over the batch -> (loss, ctc, penalty, most likely class per frame of each
        recording, frame counts)."""
        ctc, best = ctc_batch_loss(self.head, projected, targets, self.dtype)
        penalty = self.head.norm_penalty(torch.cat(projected))
        lengths = torch.tensor([p.shape[0] for p in projected])
        return ctc + penalty_weight * penalty, ctc, penalty, best, lengths

    def decode(self, best: list[torch.Tensor]) -> list[str]:
        """Most likely classes per frame, one tensor per recording -> texts."""
        return [
            self.processor.tokenizer.decode(
                self.head.ids(greedy_ctc(b, self.head.blank_index))
            ).strip()
            for b in best
        ]


@dataclass
class LoadedBatch:
    """A CTC batch read from disk: the readable (audio, text) pairs, the log-mel features and
    mask of their 30 s windows, windows per pair, and (path, error) of the unreadable ones."""

    pairs: list
    features: tuple | None
    per_audio: list[int]
    failed: list


def load_batch(processor, pairs: list[tuple[str, str]], strict: bool) -> LoadedBatch:
    """Decode and featurise a batch (CPU work, done in data-loader workers when the config asks
    for them). Unreadable audio raises when `strict`, else is listed in `failed` and left out."""
    windows, per_audio, kept, bad = [], [], [], []
    for path, text in pairs:
        try:
            loaded = processor.load_windows([path])
        except (AudioError, OSError) as err:
            if strict:
                raise
            bad.append((path, str(err)))
            continue
        windows += loaded.windows
        per_audio.append(len(loaded.windows))
        kept.append((path, text))
    features = processor.audio_features(windows) if windows else None
    return LoadedBatch(kept, features, per_audio, bad)


class _BatchReader:
    """A data-loader dataset of whole CTC batches: item k is `load_batch` of batch k."""

    def __init__(self, processor, pairs, batches: list[list[int]], strict: bool):
        self.processor, self.pairs, self.batches, self.strict = processor, pairs, batches, strict

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> LoadedBatch:
        chosen = [self.pairs[i] for i in self.batches[k]]
        return load_batch(self.processor, chosen, self.strict)


def _loaded(processor, pairs, batches, start: int, config):
    """Batches `start`.. of an epoch, loaded ahead by `num_workers` processes (0: here, in
    turn, as each step asks)."""
    reader = _BatchReader(processor, pairs, batches, config.strict_data)
    if config.num_workers == 0:
        yield from (reader[k] for k in range(start, len(batches)))
        return
    loader = torch.utils.data.DataLoader(
        reader,
        sampler=range(start, len(batches)),
        batch_size=None,
        num_workers=config.num_workers,
        prefetch_factor=4,
    )
    yield from loader


class CtcTranscriber:
    """A projector trained by this stage, alone, as a transcriber (the evaluation runner's
    protocol): greedy CTC over the LM's embeddings, no LM. For a "ctc" connector this is, as
    text, what the LM stage reads, so a held-out table beside the whole model's shows what the
    LM stage adds or loses."""

    def __init__(self, name: str, model, processor, batch_size: int = 16):
        self.name, self.batch_size = name, batch_size
        self.stage = _Stage(model, processor, _NoAutocast())

    def transcribe(self, audios, prompt: str | None = None) -> list[str]:
        """16 kHz clips or audio sources (any length) -> transcripts; the prompt is ignored."""
        stack, texts = self.stage.processor.audio_stack, []
        for start in range(0, len(audios), self.batch_size):
            windows, per_audio = [], []
            # cut here rather than by `processor.load_windows`: an engine sharing this processor
            # gives it a token counter, which would compute and store emissions never read
            for audio in audios[start : start + self.batch_size]:
                cut = [w for w in split_windows(load_audio(audio)) if window_tokens(len(w), stack)]
                windows += cut
                per_audio.append(len(cut))
            kept = [n for n in per_audio if n]  # a clip too short for one frame reads as ""
            with torch.no_grad():
                projected = []
                if kept:
                    features = self.stage.processor.audio_features(windows)
                    projected = self.stage.project_recordings(features, kept)
                decoded = iter(self.stage.decode(self.stage.head.best(projected)))
            texts += [next(decoded) if n else "" for n in per_audio]
        return texts


@dataclass
class _NoAutocast:
    bf16: bool = False


@dataclass
class CtcState:
    """Where the stage stands; saved with the weights in `ctc_state.pt` and restored on resume."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # batches of this epoch already taken
    seen_samples: int = 0
    seen_seconds: float = 0.0
    skipped: int = 0


def train_ctc(config, model, processor, out: Path, stop_after: int | None = None) -> dict:
    """The CTC alignment stage (see the module docstring). Returns a summary; `stop_after`
    ends the call after that many steps without exporting (as `train` does)."""
    model.requires_grad_(False)
    model.audio_modal_projector.requires_grad_(True)
    encoder = [p for _, p in train_encoder_top(model, config.encoder_layers)]
    pairs, lengths, unreadable = _transcription_pairs(config, processor)
    if isinstance(model.audio_modal_projector, CtcConnector):
        grow_vocabulary(model.audio_modal_projector, pairs, processor.tokenizer)
    model.to(training_device())
    stage = _Stage(model, processor, config)
    heldout = _heldout_pairs(config)
    params, optimizer, scheduler = _optimizer(config, model, stage, encoder)
    state_path = out / "ctc_state.pt"
    state = CtcState(skipped=len(unreadable))  # unreadable rows count from the start
    if config.resume and state_path.exists():
        state = _load_state(state_path, stage, optimizer, scheduler)

    metrics, skips = JsonlLog(out / "metrics.jsonl"), JsonlLog(out / "skipped.jsonl")
    if state.step == 0:
        skips.write(
            [{"stage": "length", "sample": source, "error": error} for source, error in unreadable]
        )
    batches = _batches(lengths, config.token_budget, config.seed, state.epoch)
    loaded = _loaded(processor, pairs, batches, state.position, config)
    started, steps_this_call, timed_out = time.perf_counter(), 0, False
    with StepProfiler(out, config.profile_steps) as profiler:
        while state.step < config.max_steps:
            if state.position >= len(batches):
                state.epoch, state.position = state.epoch + 1, 0
                batches = _batches(lengths, config.token_budget, config.seed, state.epoch)
                loaded = _loaded(processor, pairs, batches, 0, config)
            t0 = time.perf_counter()
            with record_function("aero.data"):
                batch = next(loaded)
            waited = time.perf_counter() - t0  # reading ahead keeps this near 0 when it keeps up
            state.position += 1
            with record_function("aero.forward"):
                projected, targets, references = stage.compute(batch)
            failed = batch.failed
            skips.write([{"stage": "ctc", "sample": p, "error": error} for p, error in failed])
            state.skipped += len(failed)
            if not projected:
                continue
            ctc, penalty, best, n_tokens, grad_norm = _ctc_step(
                stage, projected, targets, config, params, optimizer, scheduler
            )
            state.step += 1
            state.seen_samples += len(projected)
            rate = audio_tokens_per_second(model.config.projector_stack)
            state.seen_seconds += sum(float(n) for n in n_tokens) / rate
            with record_function("aero.record"):
                n = len(projected)
                record = _ctc_record(stage, state, ctc, penalty, grad_norm, scheduler, n, t0)
                record["data_wait_s"] = waited
                if state.step % config.log_every == 0:
                    record["train_wer"] = _train_wer(stage, best, references)
            if heldout and due(state.step, config.eval_every, config.max_steps):
                record.update(_heldout(stage, heldout))
            metrics.write([record])
            if due(state.step, config.save_every, config.max_steps):
                _save_state(state_path, stage, optimizer, scheduler, state)
            steps_this_call += 1
            profiler.step()
            if stop_after is not None and steps_this_call >= stop_after:
                break
            if config.out_of_time(started):
                timed_out = True
                _save_state(state_path, stage, optimizer, scheduler, state)
                break
    summary = {"step": state.step, "skipped": state.skipped}
    summary["seconds"] = time.perf_counter() - started
    if state.step < config.max_steps and not timed_out:
        return summary
    return {**summary, "adapter": str(_export(model, config, out, state))}


def _ctc_step(stage: _Stage, projected, targets, config, params, optimizer, scheduler):
    """Loss, backward, clipped optimizer step -> (ctc, penalty, most likely class per frame of
    each recording, frame counts, gradient norm)."""
    with record_function("aero.loss"):
        loss, ctc, penalty, best, n_tokens = stage.loss(projected, targets, config.ctc_norm_penalty)
    optimizer.zero_grad(set_to_none=True)
    with record_function("aero.backward"):
        loss.backward()
    with record_function("aero.optimizer"):
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
    return ctc, penalty, best, n_tokens, grad_norm


def _train_wer(stage: _Stage, best: list[torch.Tensor], references: list[str]) -> float:
    from aero.evaluation.wer import corpus_score, score_texts

    return corpus_score(score_texts(references, stage.decode(best))).error_rate


def _optimizer(config, model, stage: _Stage, encoder: list[nn.Parameter]):
    """-> (every trained parameter, AdamW, its cosine schedule). CTC trains what the CTC loss
    reads (a connector's summary token trains in the LM stage); encoder layers at `encoder_lr`."""
    params = [
        p for n, p in model.audio_modal_projector.named_parameters() if not n.startswith("summary.")
    ] + list(stage.head.parameters())
    groups = [{"params": params}]
    if encoder:
        groups.append({"params": encoder, "lr": config.encoder_lr or config.lr})
    optimizer = torch.optim.AdamW(
        groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    scheduler = cosine_schedule(
        optimizer,
        config.warmup_steps,
        config.cosine_steps,
        config.min_lr_ratio,
        config.schedule_minutes,
    )
    return params + encoder, optimizer, scheduler


def train_encoder_top(model, layers: int) -> list[tuple[str, nn.Parameter]]:
    """Make the encoder's top `layers` transformer layers and its final norm trainable (none for
    0) -> their (name, parameter) pairs, named as in the model."""
    if layers == 0:
        return []
    depth = len(model.audio_tower.layers)
    if layers > depth:
        from aero.train.config import ConfigError

        raise ConfigError(f"encoder_layers is {layers}; the encoder has {depth} layers.")
    prefixes = [f"audio_tower.layers.{k}." for k in range(depth - layers, depth)]
    chosen = [
        (name, p)
        for name, p in model.named_parameters()
        if name.startswith((*prefixes, "audio_tower.layer_norm."))
    ]
    for _, p in chosen:
        p.requires_grad_(True)
    return chosen


def trained_encoder(model) -> dict[str, torch.Tensor]:
    """The encoder's trainable parameters by name (empty while it is frozen)."""
    return {
        f"audio_tower.{name}": p
        for name, p in model.audio_tower.named_parameters()
        if p.requires_grad
    }


def grow_vocabulary(connector: CtcConnector, pairs: list[tuple[str, str]], tokenizer) -> int:
    """Let the connector emit every token of these transcripts: a fresh connector (all tokens
    allowed) is narrowed to them, one trained before keeps its tokens and adds these. Returns
    the number of emittable tokens."""
    ids = {i for _, text in pairs for i in tokenizer(text, add_special_tokens=False)["input_ids"]}
    mask = connector.vocab_mask
    with torch.no_grad():
        if bool(mask.all()):
            mask.zero_()
        mask[torch.tensor(sorted(ids), dtype=torch.long)] = True
    return int(mask.sum())


def _heldout_pairs(config) -> list[tuple[str, str]]:
    """The first `eval_samples` transcription pairs of the held-out manifest (none without one)."""
    if not config.eval_data:
        return []
    pairs = map(transcription_pair, read_dataset(DatasetSpec(config.eval_data)))
    return [p for p in pairs if p][: config.eval_samples]


def _export(model, config, out: Path, state: CtcState) -> Path:
    """`final/adapter.safetensors`: the projector's weights (preset `projector`), with the
    projector's settings and the lineage in its metadata."""
    projector = model.audio_modal_projector.state_dict()
    weights = {f"audio_modal_projector.{k}": v for k, v in projector.items()}
    # the encoder layers it trained, and those an earlier leg trained that it carried
    weights |= carried_state(model) | {k: p.detach() for k, p in trained_encoder(model).items()}
    metadata = {"preset": "projector", "objective": "ctc", "base_model": config.model}
    this = leg(
        config,
        "ctc",
        steps=state.step,
        samples=state.seen_samples,
        audio_hours=state.seen_seconds / 3600,
    )
    metadata.update(projector_metadata(model.config), **lineage_metadata(config, this))
    return save_adapter(out / "final" / ADAPTER_FILENAME, weights, {**metadata, "step": state.step})


def _ctc_record(
    stage, state: CtcState, ctc, penalty, grad_norm, scheduler, samples: int, t0: float
):
    """The metrics line of one CTC step."""
    return {
        "step": state.step,
        "objective": "ctc",
        "loss": float(ctc.detach()),
        "norm_penalty": float(penalty.detach()),
        "scale": float(stage.head.log_scale.detach().exp()),
        "lr": scheduler.get_last_lr()[0],
        "grad_norm": float(grad_norm),
        "samples": samples,
        "skipped": state.skipped,
        "samples_seen": state.seen_samples,
        "audio_hours_seen": state.seen_seconds / 3600,
        "step_s": time.perf_counter() - t0,
    }


def _transcription_pairs(
    config, processor
) -> tuple[list[tuple[str, str]], list[int], list[tuple[str, str]]]:
    """The transcription samples of every dataset: (audio, text) pairs, their token lengths, and
    (source, error) of the rows whose audio could not be measured."""
    from aero.data.lengths import measured_dataset

    pairs, lengths, unreadable = [], [], []
    for spec in config.data:
        part, n, errors = measured_dataset(spec, processor, strict=config.strict_data)
        unreadable += list(errors.items())
        for sample, length in zip(part, n):
            pair = (
                transcription_pair(sample) if length is not None else None
            )  # None: unreadable, in `errors`
            if pair is not None:
                pairs.append(pair)
                lengths.append(length)
    if not pairs:
        raise ManifestError(
            "The CTC alignment stage found no transcription samples (one audio, a text reply) "
            "in `data`."
        )
    return pairs, lengths, unreadable


def _save_state(path: Path, stage: _Stage, optimizer, scheduler, state: CtcState) -> None:
    """Weights, optimizer, schedule and position, written atomically (a kill never leaves half a
    file)."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "projector": stage.model.audio_modal_projector.state_dict(),
            "encoder": {k: p.detach() for k, p in trained_encoder(stage.model).items()},
            "head": stage.head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            **asdict(state),
        },
        tmp,
    )
    os.replace(tmp, path)


def _load_state(path: Path, stage: _Stage, optimizer, scheduler) -> CtcState:
    saved = torch.load(path, weights_only=False)
    missing, unexpected = stage.model.audio_modal_projector.load_state_dict(
        saved["projector"], strict=False
    )
    if unexpected or any(
        not k.startswith("summary.") for k in missing
    ):  # summary: not trained here
        raise RuntimeError(f"{path} does not fit this projector: {missing + unexpected}")
    encoder = trained_encoder(stage.model)
    if set(saved.get("encoder", {})) != set(encoder):
        raise RuntimeError(f"{path} was saved with other trained encoder layers than this run's.")
    with torch.no_grad():
        for name, tensor in saved.get("encoder", {}).items():
            encoder[name].copy_(tensor)
    stage.head.load_state_dict(saved["head"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return CtcState(**{f.name: saved[f.name] for f in fields(CtcState) if f.name in saved})


def _heldout(stage: _Stage, heldout: list[tuple[str, str]], batch: int = 16) -> dict:
    from aero.evaluation.wer import corpus_score, score_texts

    references, hypotheses = [], []
    with torch.no_grad():
        for start in range(0, len(heldout), batch):
            projected, _, refs = stage.forward(heldout[start : start + batch])
            hypotheses += stage.decode(stage.head.best(projected))
            references += refs
    score = corpus_score(score_texts(references, hypotheses))
    return {
        "heldout_ctc_wer": score.error_rate,
        "heldout_example": {"reference": references[0], "hypothesis": hypotheses[0]},
    }
