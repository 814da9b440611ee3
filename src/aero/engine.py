"""The generation engine: many recordings in batches, one request streamed, chat about audio.

Notable choices:
- Our own decoding loop over the LM (not `generate()`): prefill with the merged audio
  embeddings, then one token per step from a `DynamicCache`. Owning the loop gives three
  things `generate()` does not: rows that finish leave the batch (their KV cache rows are
  dropped, so one long transcript does not make seven short ones pay), a repetition guard
  with a result flag, and text streaming without a thread.
- Batches are left padded; position ids count real tokens only, so a row's numbers do not
  depend on its neighbours' lengths (up to float summation order).
- Many requests -> batches of similar prompt length (sorted by token count, cut at
  `batch_size` rows or `max_batch_tokens` padded prompt tokens). Windows of every recording
  in a batch go through the encoder together at their real length (the model groups them by
  length); files are read a few batches ahead, never all at once.
- Audio is never truncated: a prompt whose audio does not fit the LM context (with the
  requested `max_new_tokens`) is a `ContextLengthError` naming the duration that fits.
- Timestamps: one segment per 30 s encoder window, transcribed as its own request. The
  model emits no time tokens, so this is the precision we can state honestly: segment
  boundaries are exact window boundaries; inside a window there is no timing, and a word
  spoken across a boundary may be cut or appear in both segments.
- No prompt-prefix KV cache shared across requests: with aero-mini the text before the first
  audio placeholder is 3 tokens (`<|im_start|>user\\n`, no system turn), a few percent of a
  short clip's prompt, while sharing it would force a fixed padding layout on every batch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from aero.audio import (
    CHUNK_LENGTH,
    N_SAMPLES,
    SAMPLE_RATE,
    load_audio,
    split_windows,
    window_tokens,
)
from aero.processing import AeroProcessor

DEFAULT_CHAT_TOKENS = 512  # reply budget of a chat request when max_new_tokens is None
TRANSCRIPT_BASE_TOKENS = 32  # transcription budget when max_new_tokens is None: this many ...
TRANSCRIPT_TOKENS_PER_SECOND = 8  # ... plus this many per audio second (Whisper allows 224 per 30 s)
MIN_REPLY_TOKENS = 16  # a prompt leaving less room than this in the LM context is refused


@dataclass(frozen=True)
class GenerationOptions:
    """How to decode. The defaults are greedy transcription with the repetition guard on."""

    max_new_tokens: int | None = None  # reply budget; None: 32 + 8/audio s for transcripts, 512 for chat (clamped to the context)
    temperature: float = 0.0  # 0: greedy (argmax); > 0: sample from softmax(logits / temperature)
    top_p: float = 1.0  # nucleus sampling: sample among the most likely tokens holding this probability mass
    seed: int | None = None  # sampling seed for reproducible samples (None: torch's global generator)
    repetition_guard: bool = True  # stop a row whose last tokens are one n-gram repeated (a degenerate loop)
    repetition_max_ngram: int = 128  # longest repeated n-gram the guard looks for, in tokens (aero-mini's
    # one-pass long-form loops were whole sentences: 25-80 tokens)
    repetition_min_repeats: int = 4  # a loop is at least this many consecutive copies of the n-gram ...
    repetition_min_tokens: int = 32  # ... spanning at least this many tokens (a single token must repeat 32 times)
    no_repeat_ngram_size: int = 0  # > 0: no n-gram of this many tokens occurs twice in a reply (as in transformers)
    # Whisper's temperature fallback, with the repetition guard as its trigger: a reply the guard
    # stopped is decoded again at each of these temperatures in turn (e.g. FALLBACK_TEMPERATURES),
    # and the first one that ends without a loop replaces it; one that loops at every temperature
    # keeps the first decode, cut at its loop. The samples are seeded (`seed`, or 0), so results repeat.
    fallback_temperatures: tuple[float, ...] = ()
    num_beams: int = 1  # > 1: beam search (greedy, temperature 0), as Whisper's beam_size; not for streams

    def __post_init__(self):
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}.")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be between 0 and 2, not {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}.")
        if self.repetition_max_ngram < 1 or self.repetition_min_repeats < 2:
            raise ValueError("The repetition guard needs repetition_max_ngram >= 1 and repetition_min_repeats >= 2.")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be 0 (off) or a positive n-gram size, not {self.no_repeat_ngram_size}.")
        object.__setattr__(self, "fallback_temperatures", tuple(self.fallback_temperatures))  # frozen: lists come in from YAML/JSON
        if any(not 0.0 < t <= 2.0 for t in self.fallback_temperatures):
            raise ValueError(f"fallback temperatures must be in (0, 2], not {self.fallback_temperatures}.")
        if self.num_beams < 1 or (self.num_beams > 1 and (self.temperature > 0 or self.no_repeat_ngram_size)):
            raise ValueError(f"num_beams must be 1, or > 1 with temperature 0 and no no_repeat_ngram_size, not {self.num_beams}.")
        if self.fallback_temperatures and not self.repetition_guard:
            raise ValueError("fallback_temperatures needs the repetition guard on: the guard is what triggers a fallback.")


FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)  # Whisper's and faster-whisper's schedule after greedy


class ContextLengthError(ValueError):
    """A prompt (mostly audio tokens) that does not fit the language model's context."""


@dataclass
class AudioInfo:
    """One recording of a request: its length and its 30 s encoder windows, in seconds."""

    duration: float
    windows: list[tuple[float, float]]


@dataclass
class Segment:
    start: float  # seconds
    end: float  # seconds
    text: str
    temperature: float = 0.0  # of the decode that gave this window's text (> 0 after a fallback)


@dataclass
class Result:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end of turn), "length" (max_new_tokens), "repetition" (the guard)
    prompt_tokens: int
    audios: list[AudioInfo] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)  # per-window texts when timestamps were asked
    temperature: float = 0.0  # the temperature of the decode that gave this reply (> 0 after a fallback)
    warnings: list[str] = field(default_factory=list)  # what the input lost on the way (a dropped 20 ms tail)

    @property
    def stopped_by_repetition(self) -> bool:
        return self.finish_reason == "repetition"

    @property
    def duration(self) -> float:
        return sum(a.duration for a in self.audios)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class Prepared:
    """One request as model input: expanded prompt ids, its audio windows, its reply budget."""

    input_ids: list[int]
    windows: list[np.ndarray]
    audios: list[AudioInfo]
    max_new_tokens: int
    warnings: list[str] = field(default_factory=list)


def audio_info(duration: float) -> AudioInfo:
    n = max(1, math.ceil(duration / CHUNK_LENGTH - 1e-9))
    return AudioInfo(duration, [(k * CHUNK_LENGTH, min((k + 1) * CHUNK_LENGTH, duration)) for k in range(n)])


def repeated_ngram(tokens: Sequence[int], options: GenerationOptions) -> int:
    """n if the tokens end with one n-gram repeated as a loop (see GenerationOptions), else 0."""
    for n in range(1, options.repetition_max_ngram + 1):
        span = n * max(options.repetition_min_repeats, math.ceil(options.repetition_min_tokens / n))
        if len(tokens) < span:
            break
        tail = tokens[-span:]
        if tail[:-n] == tail[n:]:  # period n over the whole span
            return n
    return 0


class NgramBan:
    """no_repeat_ngram_size for one row, kept incrementally: the next tokens that would complete
    an n-gram already in the reply (a dict from each (n-1)-gram to the tokens that followed it)."""

    def __init__(self, n: int):
        self.n, self.follow = n, {}

    def add(self, tokens: Sequence[int]) -> None:
        if len(tokens) >= self.n:
            self.follow.setdefault(tuple(tokens[len(tokens) - self.n : -1]), []).append(tokens[-1])

    def banned(self, tokens: Sequence[int]) -> list[int]:
        if len(tokens) < self.n - 1:
            return []
        return self.follow.get(tuple(tokens[len(tokens) - self.n + 1 :]), [])


def loop_start(tokens: Sequence[int], n: int) -> int:
    """Index just after the first copy of the repeated n-gram that ends `tokens`."""
    i = len(tokens) - n
    while i - n >= 0 and tokens[i - n : i] == tokens[i : i + n]:
        i -= n
    return i + n


class TextStream:
    """Text pieces of one generation as they are decoded; `result` is set once exhausted."""

    def __init__(self, pieces: Iterator[str]):
        self._pieces = pieces
        self.result: Result | None = None

    def __iter__(self) -> Iterator[str]:
        return self._pieces


class Engine:
    """Batched, streaming generation with one Aero model.

    >>> engine = Engine.load("aero-mini")
    >>> [r.text for r in engine.transcribe(["a.wav", "b.mp3"])]
    >>> for piece in engine.stream(engine.prepare(messages)): print(piece, end="")
    """

    def __init__(self, model, processor: AeroProcessor, name: str = "model", batch_size: int = 8, max_batch_tokens: int = 16384):
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.context = int(model.config.text_config.max_position_embeddings)
        tok = processor.tokenizer
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if eos is not None else tok.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = tok.pad_token_id

    @classmethod
    def load(cls, name_or_path: str | os.PathLike = "aero-mini", quantize: bool = False, **kwargs) -> Engine:
        from aero.models import load

        model, processor = load(name_or_path)
        if quantize:
            from aero.quantize import quantize_dynamic_int8

            model = quantize_dynamic_int8(model)
        return cls(model, processor, name=str(name_or_path), **kwargs)

    # ----- requests -> model inputs --------------------------------------------------------

    def prepare(
        self,
        messages: Sequence[dict],
        options: GenerationOptions | None = None,
        transcription: bool = False,
        root: str | os.PathLike | None = None,
    ) -> Prepared:
        """A conversation (OpenAI-style content parts; audio parts are loaded) -> Prepared.

        Raises AudioError for unusable audio and ContextLengthError when it does not fit.
        """
        options = options or GenerationOptions()
        encoded = self.processor.encode_conversation(messages, add_generation_prompt=True, root=root)
        ids, audio = encoded["input_ids"], encoded["audio"]
        audios = [audio_info(d) for d in audio.durations]
        seconds = sum(a.duration for a in audios)
        room = self.context - len(ids)
        if options.max_new_tokens is not None:
            budget = options.max_new_tokens
        elif transcription:
            budget = min(TRANSCRIPT_BASE_TOKENS + math.ceil(TRANSCRIPT_TOKENS_PER_SECOND * seconds), room)
        else:
            budget = min(DEFAULT_CHAT_TOKENS, room)
        if budget > room or room < MIN_REPLY_TOKENS:
            rate = self.processor.tokens_per_window([np.zeros(N_SAMPLES, np.float32)])[0] / CHUNK_LENGTH
            text_tokens = len(ids) - sum(self.processor.tokens_per_window(audio.windows))
            fits = max(0.0, (self.context - text_tokens - max(budget, MIN_REPLY_TOKENS)) / rate)
            raise ContextLengthError(
                f"The request's prompt is {len(ids)} tokens ({seconds:.1f} s of audio at {rate:g} tokens/s) and asks "
                f"for {budget} new tokens, but the model's context holds {self.context}; send at most ~{fits:.0f} s "
                "of audio per request (split the recording) or lower max_new_tokens."
            )
        return Prepared(ids, list(audio.windows), audios, budget, list(audio.warnings))

    # ----- batched generation ----------------------------------------------------------------

    def batches(self, prepared: Sequence[Prepared]) -> list[list[int]]:
        """Indices of `prepared` cut into batches of similar prompt length."""
        order = sorted(range(len(prepared)), key=lambda i: len(prepared[i].input_ids))
        out: list[list[int]] = []
        for i in order:
            L = len(prepared[i].input_ids)
            if out and len(out[-1]) < self.batch_size and L * (len(out[-1]) + 1) <= self.max_batch_tokens:
                out[-1].append(i)
            else:
                out.append([i])
        return out

    def generate(self, prepared: Sequence[Prepared], options: GenerationOptions | None = None) -> Iterator[tuple[int, Result]]:
        """(index, Result) for every request, batch by batch (shortest prompts first)."""
        options = options or GenerationOptions()
        for batch in self.batches(prepared):
            requests = [prepared[i] for i in batch]
            results = self._fall_back(requests, _drain(self._decode(requests, options)), options)
            yield from zip(batch, results)

    def _fall_back(self, prepared: Sequence[Prepared], results: list[Result], options: GenerationOptions) -> list[Result]:
        """Decode the rows the repetition guard stopped again at each fallback temperature in turn."""
        for temperature in options.fallback_temperatures:
            redo = [k for k, r in enumerate(results) if r.stopped_by_repetition]
            if not redo:
                break
            sampled = replace(options, temperature=temperature, seed=0 if options.seed is None else options.seed, num_beams=1)
            for k, result in zip(redo, _drain(self._decode([prepared[k] for k in redo], sampled))):
                if not result.stopped_by_repetition:
                    results[k] = result
        return results

    def generate_all(self, prepared: Sequence[Prepared], options: GenerationOptions | None = None) -> list[Result]:
        out: list[Result | None] = [None] * len(prepared)
        for i, result in self.generate(prepared, options):
            out[i] = result
        return out  # type: ignore[return-value]

    def stream(self, prepared: Prepared, options: GenerationOptions | None = None) -> TextStream:
        """Text pieces of one request as they are decoded; they join to `stream.result.text`.

        When the repetition guard fires, the pieces already sent include the loop's copies;
        `stream.result.text` keeps only its first copy (as non-streamed results do). Streams get
        no temperature fallback: their pieces are already out.
        """
        options = options or GenerationOptions()
        steps = self._decode([prepared], options)
        stream = TextStream(iter(()))

        def pieces() -> Iterator[str]:
            tokens: list[int] = []
            sent = ""
            while True:
                try:
                    new = next(steps)
                except StopIteration as stop:
                    stream.result = stop.value[0]
                    break
                tokens += [t for row, t in new if t not in self.eos_ids]
                text = self.processor.decode(tokens, skip_special_tokens=True).lstrip()
                text = text.removesuffix("\ufffd")  # a character split across tokens: wait for the rest
                text = text.rstrip()  # trailing space may be the end: sent with the next word
                if text.startswith(sent) and len(text) > len(sent):
                    yield text[len(sent) :]
                    sent = text
            final = stream.result.text
            if final.startswith(sent) and len(final) > len(sent):
                yield final[len(sent) :]

        stream._pieces = pieces()
        return stream

    def _prefill(self, prepared: Sequence[Prepared]):
        """The prompts (left-padded, audio merged) through the LM: (output, cache, mask, positions)."""
        model, lm = self.model, self.model.language_model
        device = next(model.parameters()).device
        batch = self.processor.pad([p.input_ids for p in prepared], padding_side="left")
        input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        embeds = model.get_input_embeddings()(input_ids)
        windows = [w for p in prepared for w in p.windows]
        if windows:
            values, frames = self.processor.audio_features(windows)
            features = model.get_audio_features(values.to(device), frames.to(device))
            embeds = model.merge_audio(input_ids, embeds, features)
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=lm.config)
        out = lm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions, cache=cache,
                 use_cache=True, logits_to_keep=1)
        return out, cache, attention_mask, positions

    @torch.inference_mode()
    def _decode(self, prepared: Sequence[Prepared], options: GenerationOptions):
        """Generator: yields [(row, token)] after every step; returns the rows' Results."""
        if options.num_beams > 1:
            results = [self._beam_search(p, options) for p in prepared]
            yield [(row, t) for row, r in enumerate(results) for t in r.token_ids]
            return results
        lm = self.model.language_model
        device = next(self.model.parameters()).device
        out, cache, attention_mask, positions = self._prefill(prepared)
        generator = None
        if options.temperature > 0 and options.seed is not None:
            generator = torch.Generator(device=device).manual_seed(options.seed)

        B = len(prepared)
        tokens: list[list[int]] = [[] for _ in range(B)]
        reasons: list[str | None] = [None] * B
        active = list(range(B))  # original rows still decoding, in cache row order
        last_position = positions[:, -1]
        seen = [NgramBan(options.no_repeat_ngram_size) for _ in range(B)] if options.no_repeat_ngram_size else None
        while True:
            logits = out.logits[:, -1].float()
            if seen is not None:
                for slot, row in enumerate(active):
                    banned = seen[row].banned(tokens[row])
                    if banned:
                        logits[slot, banned] = float("-inf")
            chosen = _pick(logits, options, generator).tolist()
            events, keep = [], []
            for slot, (row, token) in enumerate(zip(active, chosen)):
                events.append((row, token))
                if token in self.eos_ids:
                    reasons[row] = "stop"
                    continue
                tokens[row].append(token)
                if seen is not None:
                    seen[row].add(tokens[row])
                n = repeated_ngram(tokens[row], options) if options.repetition_guard else 0
                if n:
                    reasons[row] = "repetition"
                elif len(tokens[row]) >= prepared[row].max_new_tokens:
                    reasons[row] = "length"
                else:
                    keep.append(slot)
            yield events
            if not keep:
                break
            if len(keep) < len(active):  # finished rows leave the batch and the cache
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                attention_mask, last_position = attention_mask[index], last_position[index]
                active = [active[s] for s in keep]
                chosen = [chosen[s] for s in keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
            last_position = last_position + 1
            out = lm(input_ids=torch.tensor(chosen, device=device)[:, None], attention_mask=attention_mask,
                     position_ids=last_position[:, None], cache=cache, use_cache=True)

        return [self._result(p, tokens[row], reasons[row] or "length", options) for row, p in enumerate(prepared)]

    def _result(self, p: Prepared, ids: list[int], reason: str, options: GenerationOptions) -> Result:
        """A finished row as a Result; a row the repetition guard stopped is cut to the loop's first copy."""
        if reason == "repetition":
            ids = ids[: loop_start(ids, repeated_ngram(ids, options))]
        text = self.processor.decode(ids, skip_special_tokens=True).strip()
        return Result(text, ids, reason, len(p.input_ids), p.audios, temperature=options.temperature,
                      warnings=list(p.warnings))

    def _beam_search(self, p: Prepared, options: GenerationOptions) -> Result:
        """One request, `num_beams` hypotheses kept per step by summed log-probability.

        As Whisper's decoder: the search ends once `num_beams` hypotheses have finished, and the
        best finished one by mean log-probability per token wins. A hypothesis the repetition
        guard stops finishes too (cut at its loop), but wins only when every finished one looped.
        """
        lm, K = self.model.language_model, options.num_beams
        out, cache, attention_mask, positions = self._prefill([p])
        device = attention_mask.device
        beams: list[list[int]] = [[]]
        scores = torch.zeros(1, device=device)
        last_position = positions[:, -1]
        finished: list[tuple[bool, float, list[int], str]] = []  # (looped, mean log-prob, tokens, reason)
        while True:
            logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
            total = (scores[:, None] + logprobs).flatten()
            vocab = logprobs.shape[-1]
            parents, new_beams, new_scores = [], [], []
            best = total.topk(min(2 * K, total.numel()))
            for score, index in zip(best.values.tolist(), best.indices.tolist()):
                parent, token = divmod(index, vocab)
                ids = beams[parent] + ([] if token in self.eos_ids else [token])
                if token in self.eos_ids:
                    finished.append((False, score / (len(ids) + 1), ids, "stop"))
                elif options.repetition_guard and repeated_ngram(ids, options):
                    finished.append((True, score / len(ids), ids, "repetition"))
                elif len(ids) >= p.max_new_tokens:
                    finished.append((False, score / len(ids), ids, "length"))
                else:
                    parents.append(parent)
                    new_beams.append(ids)
                    new_scores.append(score)
                if len(new_beams) == K:
                    break
            if len(finished) >= K or not new_beams:
                break
            index = torch.tensor(parents, device=device)
            cache.batch_select_indices(index)
            beams, scores = new_beams, torch.tensor(new_scores, device=device)
            attention_mask = torch.cat([attention_mask[index], attention_mask.new_ones((len(beams), 1))], dim=1)
            last_position = last_position[index] + 1
            out = lm(input_ids=torch.tensor([b[-1] for b in beams], device=device)[:, None], attention_mask=attention_mask,
                     position_ids=last_position[:, None], cache=cache, use_cache=True)
        # The loop ends only with a finished hypothesis: K of them, or every candidate finished.
        _, _, ids, reason = max(finished, key=lambda f: (not f[0], f[1]))
        return self._result(p, ids, reason, options)

    # ----- transcription and chat -------------------------------------------------------------

    def transcribe(
        self, audios: Sequence[Any], prompt: str | None = None, options: GenerationOptions | None = None,
        timestamps: bool = False,
    ) -> list[Result]:
        """Audio sources (paths, bytes, 16 kHz arrays, ...) -> one Result each; errors raise."""
        out: list[Result | None] = [None] * len(audios)
        for i, result in self.transcribe_iter(audios, prompt, options, timestamps):
            if isinstance(result, Exception):
                raise result
            out[i] = result
        return out  # type: ignore[return-value]

    def transcribe_iter(
        self, audios: Sequence[Any], prompt: str | None = None, options: GenerationOptions | None = None,
        timestamps: bool = False, lookahead: int = 4,
    ) -> Iterator[tuple[int, Result | Exception]]:
        """(index, Result) as each recording finishes; an unusable one gives (index, error).

        Recordings are read `lookahead` batches at a time and batched by prompt length.
        With `timestamps`, each 30 s window is its own request and becomes one Segment; the
        Result's text is the segments' texts joined.
        """
        options = options or GenerationOptions()
        chunk = max(1, self.batch_size * lookahead)
        for start in range(0, len(audios), chunk):
            requests: list[Prepared] = []
            owner: list[int] = []  # recording index of each request
            pending: dict[int, int] = {}  # recording index -> requests not yet done
            for i in range(start, min(start + chunk, len(audios))):
                try:
                    parts = self._transcription_requests(audios[i], prompt, options, timestamps)
                except Exception as err:  # noqa: BLE001 - reported per recording, the rest continue
                    yield i, err
                    continue
                requests += parts
                owner += [i] * len(parts)
                pending[i] = len(parts)
            done: dict[int, list[tuple[int, Result]]] = {i: [] for i in pending}
            for r, result in self.generate(requests, options):
                i = owner[r]
                done[i].append((r, result))
                pending[i] -= 1
                if pending[i] == 0:
                    yield i, _combine([res for _, res in sorted(done.pop(i), key=lambda p: p[0])], timestamps)

    def _transcription_requests(self, source: Any, prompt: str | None, options: GenerationOptions, timestamps: bool) -> list[Prepared]:
        samples = load_audio(source)
        if not timestamps:
            return [self.prepare(self.processor.transcription_messages(samples, prompt), options, transcription=True)]
        requests: list[Prepared] = []
        for k, window in enumerate(split_windows(samples)):
            if requests and window_tokens(len(window), self.processor.audio_stack) == 0:  # a last 20 ms or less
                requests[-1].warnings.append(
                    f"The last {1000 * len(window) / SAMPLE_RATE:.0f} ms of the audio give no audio token and were left out."
                )
                continue
            p = self.prepare(self.processor.transcription_messages(window, prompt), options, transcription=True)
            start = k * CHUNK_LENGTH
            end = min(start + CHUNK_LENGTH, len(samples) / SAMPLE_RATE)
            p.audios = [AudioInfo(len(samples) / SAMPLE_RATE, [(start, end)])]
            requests.append(p)
        return requests

    def chat(self, messages: Sequence[dict], options: GenerationOptions | None = None, root=None) -> Result:
        """One conversation (audio content parts and text, several turns) -> the reply."""
        options = options or GenerationOptions()
        return self.generate_all([self.prepare(messages, options, root=root)], options)[0]


def _combine(parts: list[Result], timestamps: bool) -> Result:
    if not timestamps:
        return parts[0]
    info = AudioInfo(parts[0].audios[0].duration, [p.audios[0].windows[0] for p in parts])
    segments = [Segment(*p.audios[0].windows[0], p.text, p.temperature) for p in parts]
    reasons = [p.finish_reason for p in parts]
    reason = "repetition" if "repetition" in reasons else "length" if "length" in reasons else "stop"
    return Result(
        text=" ".join(s.text for s in segments if s.text),
        token_ids=[t for p in parts for t in p.token_ids],
        finish_reason=reason,
        prompt_tokens=sum(p.prompt_tokens for p in parts),
        audios=[info],
        segments=segments,
        temperature=max(p.temperature for p in parts),
        warnings=[w for p in parts for w in p.warnings],
    )


def _drain(steps) -> list[Result]:
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def _pick(logits: torch.Tensor, options: GenerationOptions, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits -> (B,) next tokens: argmax, or a temperature/top-p sample."""
    if options.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / options.temperature, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the mass before it already reaches top_p (the top token always stays).
        drop = sorted_probs.cumsum(-1) - sorted_probs >= options.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def with_options(options: GenerationOptions | None, **changes) -> GenerationOptions:
    """A copy of `options` (or the defaults) with the given fields changed; None values skipped."""
    return replace(options or GenerationOptions(), **{k: v for k, v in changes.items() if v is not None})



def model_facts(engine: Engine) -> dict[str, Any]:
    """What `aero info` prints: sizes, context, audio token rate, longest audio per request."""
    model, processor = engine.model, engine.processor

    def millions(module) -> str:
        return f"{sum(p.numel() for p in module.parameters()) / 1e6:.1f} M"

    rate = processor.tokens_per_window([np.zeros(N_SAMPLES, np.float32)])[0] / CHUNK_LENGTH
    probe = processor.encode_conversation(processor.transcription_messages(np.zeros(N_SAMPLES, np.float32)), add_generation_prompt=True)
    text_tokens = len(probe["input_ids"]) - processor.tokens_per_window(probe["audio"].windows)[0]
    room = engine.context - text_tokens
    # Longest audio whose default transcript budget (32 + 8/s) still fits: rate*s + 32 + 8*s <= room.
    longest = (room - TRANSCRIPT_BASE_TOKENS) / (rate + TRANSCRIPT_TOKENS_PER_SECOND)
    text = model.config.text_config
    return {
        "audio encoder": f"{millions(model.audio_tower)} ({model.config.audio_config.encoder_layers} layers, d={model.config.audio_config.d_model})",
        "projector": millions(model.audio_modal_projector),
        "language model": f"{millions(model.language_model)} ({text.model_type}, {text.num_hidden_layers} layers, d={text.hidden_size})",
        "LM context": f"{engine.context} tokens",
        "audio tokens": f"{rate:.2f} per second",
        "transcription prompt": f"{processor.transcribe_prompt!r} ({text_tokens} text tokens + audio)",
        "longest audio (default budget)": f"~{longest / 60:.1f} min per request",
        "end of turn": ", ".join(processor.tokenizer.convert_ids_to_tokens(sorted(engine.eos_ids))),
        "system prompt": repr(processor.system_prompt),
        "dtype": str(next(model.parameters()).dtype),
    }
