"""The generation engine: many recordings in batches, one request streamed, chat about audio.

The recording-level driver over `aero.decoding` (which turns prompts already through the LM
into token ids): audio and conversations in, prompts with their context budget, batches,
text, streams and timestamps out.

Notable choices:
- Our own decoding loop over the LM (not `generate()`, see `aero.decoding`): prefill with the
  merged audio embeddings here, then one token per step from a `DynamicCache`. Owning the loop
  gives three things `generate()` does not: rows that finish leave the batch, a repetition
  guard with a result flag, and text streaming without a thread.
- Batches are left padded; position ids count real tokens only, so a row's numbers do not
  depend on its neighbours' lengths (up to float summation order).
- Many requests -> batches of similar prompt length (sorted by token count, cut at
  `batch_size` rows or `max_batch_tokens` padded prompt tokens). Windows of every recording
  in a batch go through the encoder together at their real length (the model groups them by
  length); files are read a few batches ahead, never all at once.
- Audio is never truncated: a prompt whose audio does not fit the LM context (with the
  requested `max_new_tokens`) is a `ContextLengthError` naming the duration that fits.
- Timestamps: the model emits no time tokens. Word timestamps align the whole recording's
  reply to the audio afterwards (aero.timestamps; the model's own aligner, else aero-mini's).
  Without them, `timestamps` gives one segment per 30 s window, each window its own request:
  exact window boundaries, no timing inside a window, and a word spoken across a boundary may
  be cut or appear in both segments.
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
from transformers import DynamicCache

from aero.audio import (
    CHUNK_LENGTH,
    N_SAMPLES,
    SAMPLE_RATE,
    audio_tokens_per_second,
    duration_seconds,
    load_audio,
    split_windows,
    window_tokens,
)
from aero.ctc_scoring import CtcPosteriors, CtcPrefixScorer
from aero.decoding import (
    DEFAULT_MAX_NEW_TOKENS,
    Decoded,
    Decoder,
    GenerationOptions,
    LoopTokens,
    Prefill,
)
from aero.processing import AeroProcessor, count_audio_tokens_with
from aero.timestamps import ALIGNER_FILE, Word, WordAligner

TRANSCRIPT_BASE_TOKENS = 32  # transcription budget when max_new_tokens is None: this many ...
TRANSCRIPT_TOKENS_PER_SECOND = 8  # ... plus this many per audio second (Whisper: 224 per 30 s)
MIN_REPLY_TOKENS = 16  # a prompt leaving less room than this in the LM context is refused


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
    # Per-window texts when timestamps were asked.
    segments: list[Segment] = field(default_factory=list)
    # The temperature of the decode that gave this reply (> 0 after a fallback).
    temperature: float = 0.0
    # What the input lost on the way (a dropped 20 ms tail), or what could not be done.
    warnings: list[str] = field(default_factory=list)
    # Every word of `text` with its time, when word timestamps were asked (aero.timestamps).
    words: list[Word] = field(default_factory=list)

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
    # the reply is the audio's transcript: a "ctc" connector's CTC scores may join the decoding
    transcription: bool = False


def audio_info(duration: float) -> AudioInfo:
    n = max(1, math.ceil(duration / CHUNK_LENGTH - 1e-9))
    windows = [(k * CHUNK_LENGTH, min((k + 1) * CHUNK_LENGTH, duration)) for k in range(n)]
    return AudioInfo(duration, windows)


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

    def __init__(
        self,
        model,
        processor: AeroProcessor,
        name: str = "model",
        batch_size: int = 8,
        max_batch_tokens: int = 16384,
        aligner_path: str | os.PathLike | None = None,
        bundled_aligner: bool = True,
    ):
        self.model = model.eval()
        self.aligner_path = aligner_path  # this model's own word aligner (None: it has none)
        # Without one, word timestamps come from aero-mini's (its Whisper tiny.en encoder and head,
        # loaded on first use): alignment needs the audio and the words, not this model.
        self.bundled_aligner = bundled_aligner
        self._aligner: WordAligner | None = None
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
        self.loop_tokens = LoopTokens.of(tok)  # numerals match in the repetition guard
        # a "ctc" projector: token counts come from the audio itself, and its CTC posteriors
        # score transcripts (joint CTC/LM decoding)
        self.compressed = count_audio_tokens_with(model, processor)
        if self.compressed is not None:
            self.compressed.posteriors = True

    @classmethod
    def load(
        cls, name_or_path: str | os.PathLike = "aero-mini", quantize: bool = False, **kwargs
    ) -> Engine:
        from aero.models import aligner_file, load

        model, processor = load(name_or_path)
        if quantize:
            from aero.quantize import quantize_dynamic_int8

            model = quantize_dynamic_int8(model)
        kwargs.setdefault("aligner_path", aligner_file(name_or_path))
        return cls(model, processor, name=str(name_or_path), **kwargs)

    @property
    def has_word_aligner(self) -> bool:
        """Whether this model has its own aligner (then srt/vtt follow the words by default)."""
        return bool(self.aligner_path)

    def word_aligner(self) -> WordAligner:
        """This model's word aligner, else aero-mini's (loaded on first use); an error names what
        is missing."""
        if self._aligner is None:
            if self.aligner_path:
                self._aligner = WordAligner.from_file(self.model, self.processor, self.aligner_path)
            elif self.bundled_aligner:
                from aero.models import bundled_aligner

                self._aligner = bundled_aligner()
            else:
                raise FileNotFoundError(
                    f"Model {self.name} has no word aligner ({ALIGNER_FILE} beside its weights); "
                    "train one with scripts/train_aligner.py."
                )
        return self._aligner

    def add_word_times(self, result: Result, samples: np.ndarray) -> Result:
        """`result.words` from aligning its text to `samples`; a failure becomes a warning."""
        try:
            result.words = self.word_aligner().align(samples, result.text)
        except ValueError as err:  # e.g. a looping reply longer than the audio can hold
            result.warnings.append(f"No word timestamps: {err}")
        return result

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
        encoded = self.processor.encode_conversation(
            messages, add_generation_prompt=True, root=root
        )
        ids, audio = encoded["input_ids"], encoded["audio"]
        audios = [audio_info(d) for d in audio.durations]
        seconds = sum(a.duration for a in audios)
        room = self.context - len(ids)
        if options.max_new_tokens is not None:
            budget = options.max_new_tokens
        elif transcription:
            per_second = math.ceil(TRANSCRIPT_TOKENS_PER_SECOND * seconds)
            budget = min(TRANSCRIPT_BASE_TOKENS + per_second, room)
        else:
            budget = min(DEFAULT_MAX_NEW_TOKENS, room)
        if budget > room or room < MIN_REPLY_TOKENS:
            rate = audio_tokens_per_second(self.processor.audio_stack)
            text_tokens = len(ids) - sum(self.processor.tokens_per_window(audio.windows))
            reply = max(budget, MIN_REPLY_TOKENS)  # never a negative "request" in the message
            fits = max(0.0, (self.context - text_tokens - reply) / rate)
            raise ContextLengthError(
                f"The request's prompt is {len(ids)} tokens ({seconds:.1f} s of audio at "
                f"{rate:g} tokens/s) and needs {reply} new tokens, but the model's context "
                f"holds {self.context} ({max(room, 0)} left for the reply); send at most "
                f"~{fits:.0f} s of audio per request (split the recording) or lower max_new_tokens."
            )
        warnings = list(audio.warnings)
        return Prepared(ids, list(audio.windows), audios, budget, warnings, transcription)

    # ----- batched generation ----------------------------------------------------------------

    def batches(self, prepared: Sequence[Prepared]) -> list[list[int]]:
        """Indices of `prepared` cut into batches of similar prompt length."""
        order = sorted(range(len(prepared)), key=lambda i: len(prepared[i].input_ids))
        out: list[list[int]] = []
        for i in order:
            L = len(prepared[i].input_ids)
            if (
                out
                and len(out[-1]) < self.batch_size
                and L * (len(out[-1]) + 1) <= self.max_batch_tokens
            ):
                out[-1].append(i)
            else:
                out.append([i])
        return out

    def generate(
        self, prepared: Sequence[Prepared], options: GenerationOptions | None = None
    ) -> Iterator[tuple[int, Result]]:
        """(index, Result) for every request, batch by batch (shortest prompts first)."""
        options = options or GenerationOptions()
        for batch in self.batches(prepared):
            requests = [prepared[i] for i in batch]
            results = self._fall_back(requests, self._decode(requests, options), options)
            yield from zip(batch, results)

    def _fall_back(
        self, prepared: Sequence[Prepared], results: list[Result], options: GenerationOptions
    ) -> list[Result]:
        """Decode the rows the repetition guard stopped again at each fallback temperature."""
        seed = 0 if options.seed is None else options.seed
        for temperature in options.fallback_temperatures:
            redo = [k for k, r in enumerate(results) if r.stopped_by_repetition]
            if not redo:
                break
            sampled = replace(options, temperature=temperature, seed=seed, num_beams=1)
            for k, result in zip(redo, self._decode([prepared[k] for k in redo], sampled)):
                if not result.stopped_by_repetition:
                    results[k] = result
        return results

    def generate_all(
        self, prepared: Sequence[Prepared], options: GenerationOptions | None = None
    ) -> list[Result]:
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
        decoder = self._decoder([prepared], options)
        stream = TextStream(iter(()))

        def pieces() -> Iterator[str]:
            tokens: list[int] = []
            sent = ""
            for new in decoder.steps():
                tokens += [t for row, t in new if t not in self.eos_ids]
                text = self.processor.decode(tokens, skip_special_tokens=True).lstrip()
                text = text.removesuffix("\ufffd")  # a character split across tokens: wait
                text = text.rstrip()  # trailing space may be the end: sent with the next word
                if text.startswith(sent) and len(text) > len(sent):
                    yield text[len(sent) :]
                    sent = text
            stream.result = self._result(prepared, decoder.results[0], options)
            final = stream.result.text
            if final.startswith(sent) and len(final) > len(sent):
                yield final[len(sent) :]

        stream._pieces = pieces()
        return stream

    def _decoder(self, prepared: Sequence[Prepared], options: GenerationOptions) -> Decoder:
        """A Decoder over the requests; their prompts go through the LM on its first step."""
        return Decoder(
            self.model.language_model,
            lambda rows: self._prefill([prepared[row] for row in rows]),
            [p.max_new_tokens for p in prepared],
            self.eos_ids,
            options,
            self.loop_tokens,
        )

    def _decode(self, prepared: Sequence[Prepared], options: GenerationOptions) -> list[Result]:
        """The requests decoded together, one Result each."""
        decoded = self._decoder(prepared, options).run()
        return [self._result(p, d, options) for p, d in zip(prepared, decoded)]

    def _prefill(self, prepared: Sequence[Prepared]) -> Prefill:
        """The prompts (left-padded, audio merged) through the LM."""
        model, lm = self.model, self.model.language_model
        device = next(model.parameters()).device
        batch = self.processor.pad([p.input_ids for p in prepared], padding_side="left")
        input_ids = batch["input_ids"].to(device)
        attention_mask = batch["attention_mask"].to(device)
        embeds = model.get_input_embeddings()(input_ids)
        windows = [w for p in prepared for w in p.windows]
        scorers: list[CtcPrefixScorer | None] = [None] * len(prepared)
        if windows and self.compressed is not None:
            features, posteriors = self.compressed.take(windows)
            embeds = model.merge_audio(input_ids, embeds, features)
            scorers = _ctc_scorers(prepared, posteriors)
        elif windows:
            values, frames = self.processor.audio_features(windows)
            features = model.get_audio_features(values.to(device), frames.to(device))
            embeds = model.merge_audio(input_ids, embeds, features)
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=lm.config)
        out = lm(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return Prefill(out, cache, attention_mask, positions, scorers)

    def _result(self, p: Prepared, decoded: Decoded, options: GenerationOptions) -> Result:
        """A finished row (a loop already cut to its first copy) as a Result with its text."""
        ids = decoded.token_ids
        text = self.processor.decode(ids, skip_special_tokens=True).strip()
        return Result(
            text,
            ids,
            decoded.finish_reason,
            len(p.input_ids),
            p.audios,
            temperature=options.temperature,
            warnings=list(p.warnings),
        )

    # ----- transcription and chat -------------------------------------------------------------

    def transcribe(
        self,
        audios: Sequence[Any],
        prompt: str | None = None,
        options: GenerationOptions | None = None,
        timestamps: bool = False,
        word_timestamps: bool = False,
    ) -> list[Result]:
        """Audio sources (paths, bytes, 16 kHz arrays, ...) -> one Result each; errors raise."""
        out: list[Result | None] = [None] * len(audios)
        results = self.transcribe_iter(audios, prompt, options, timestamps, word_timestamps)
        for i, result in results:
            if isinstance(result, Exception):
                raise result
            out[i] = result
        return out  # type: ignore[return-value]

    def transcribe_iter(
        self,
        audios: Sequence[Any],
        prompt: str | None = None,
        options: GenerationOptions | None = None,
        timestamps: bool = False,
        word_timestamps: bool = False,
        lookahead: int = 4,
    ) -> Iterator[tuple[int, Result | Exception]]:
        """(index, Result) as each recording finishes; an unusable one gives (index, error).

        Recordings are read `lookahead` batches at a time and batched by prompt length.
        With `timestamps`, each 30 s window is its own request and becomes one Segment; the
        Result's text is the segments' texts joined. With `word_timestamps` (which takes
        precedence), each recording is one generation and its words are then aligned to the
        audio (`Result.words`).
        """
        options = options or GenerationOptions()
        if word_timestamps:
            self.word_aligner()  # a model without an aligner fails here, before any decoding
            timestamps = False
        chunk = max(1, self.batch_size * lookahead)
        for start in range(0, len(audios), chunk):
            requests: list[Prepared] = []
            owner: list[int] = []  # recording index of each request
            pending: dict[int, int] = {}  # recording index -> requests not yet done
            for i in range(start, min(start + chunk, len(audios))):
                try:
                    parts = self._transcription_requests(audios[i], prompt, options, timestamps)
                except Exception as err:  # noqa: BLE001 - reported per recording, the rest go on
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
                    finished = [res for _, res in sorted(done.pop(i), key=lambda p: p[0])]
                    result = _combine(finished, timestamps)
                    if word_timestamps:
                        self.add_word_times(result, np.concatenate(requests[r].windows))
                    yield i, result

    def _transcription_requests(
        self, source: Any, prompt: str | None, options: GenerationOptions, timestamps: bool
    ) -> list[Prepared]:
        samples = load_audio(source)
        if not timestamps:
            messages = self.processor.transcription_messages(samples, prompt)
            return [self.prepare(messages, options, transcription=True)]
        requests: list[Prepared] = []
        for k, window in enumerate(split_windows(samples)):
            # A last 20 ms or less gives no audio token.
            if requests and window_tokens(len(window), self.processor.audio_stack) == 0:
                requests[-1].warnings.append(
                    f"The last {1000 * len(window) / SAMPLE_RATE:.0f} ms of the audio give no "
                    "audio token and were left out."
                )
                continue
            messages = self.processor.transcription_messages(window, prompt)
            p = self.prepare(messages, options, transcription=True)
            start = k * CHUNK_LENGTH
            end = min(start + CHUNK_LENGTH, duration_seconds(samples))
            p.audios = [AudioInfo(duration_seconds(samples), [(start, end)])]
            requests.append(p)
        return requests

    def chat(
        self, messages: Sequence[dict], options: GenerationOptions | None = None, root=None
    ) -> Result:
        """One conversation (audio content parts and text, several turns) -> the reply."""
        options = options or GenerationOptions()
        return self.generate_all([self.prepare(messages, options, root=root)], options)[0]


def _ctc_scorers(
    prepared: Sequence[Prepared], posteriors: Sequence[CtcPosteriors | None]
) -> list[CtcPrefixScorer | None]:
    """A CTC prefix scorer over each transcription's windows (`posteriors`: every window of
    `prepared`, in order); None for the other requests."""
    scorers: list[CtcPrefixScorer | None] = []
    start = 0
    for p in prepared:
        own = posteriors[start : start + len(p.windows)]
        start += len(p.windows)
        usable = p.transcription and own and all(post is not None for post in own)
        scorers.append(CtcPrefixScorer(CtcPosteriors.cat(own)) if usable else None)
    return scorers


def _combine(parts: list[Result], timestamps: bool) -> Result:
    if not timestamps:
        return parts[0]
    info = AudioInfo(parts[0].audios[0].duration, [p.audios[0].windows[0] for p in parts])
    segments = [Segment(*p.audios[0].windows[0], p.text, p.temperature) for p in parts]
    reasons = [p.finish_reason for p in parts]
    reason = next((r for r in ("repetition", "length") if r in reasons), "stop")
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


def model_facts(engine: Engine) -> dict[str, Any]:
    """What `aero info` prints: sizes, context, audio token rate, longest audio per request."""
    model, processor = engine.model, engine.processor

    def millions(module) -> str:
        return f"{sum(p.numel() for p in module.parameters()) / 1e6:.1f} M"

    rate = audio_tokens_per_second(processor.audio_stack)
    silence = processor.transcription_messages(np.zeros(N_SAMPLES, np.float32))
    probe = processor.encode_conversation(silence, add_generation_prompt=True)
    # the prompt's own tokens (a "ctc" connector sizes its audio by what silence emits)
    text_tokens = sum(int(i) != processor.audio_token_id for i in probe["input_ids"])
    room = engine.context - text_tokens
    # Longest audio whose default transcript budget (32 + 8/s) still fits:
    # rate*s + 32 + 8*s <= room.
    longest = (room - TRANSCRIPT_BASE_TOKENS) / (rate + TRANSCRIPT_TOKENS_PER_SECOND)
    audio, text = model.config.audio_config, model.config.text_config
    eos = processor.tokenizer.convert_ids_to_tokens(sorted(engine.eos_ids))
    return {
        "audio encoder": f"{millions(model.audio_tower)} ({audio.encoder_layers} layers, "
        f"d={audio.d_model})",
        "projector": millions(model.audio_modal_projector),
        "language model": f"{millions(model.language_model)} ({text.model_type}, "
        f"{text.num_hidden_layers} layers, d={text.hidden_size})",
        "LM context": f"{engine.context} tokens",
        "audio tokens": f"{rate:.2f} per second",
        "transcription prompt": f"{processor.transcribe_prompt!r} ({text_tokens} text tokens "
        "+ audio)",
        "longest audio (default budget)": f"~{longest / 60:.1f} min per request",
        "end of turn": ", ".join(eos),
        "system prompt": repr(processor.system_prompt),
        "dtype": str(next(model.parameters()).dtype),
        "word timestamps": str(engine.aligner_path or "aero-mini's aligner (on request)"),
    }
