"""AeroProcessor: audio -> log-mel windows, chat prompt -> token ids with expanded placeholders.

Notable choices:
- One renderer (`render_segments`) produces the chat format for inference AND training; the
  jinja template saved with a checkpoint is the same format, for other tools (a test keeps
  the two equal). A system turn is inserted when the conversation does not start with one.
- A transformers `ProcessorMixin` registered for `AutoProcessor` (model_type "aero"): it
  reads and writes the published file set and takes the model card's call
  (`text=`, `audios=`, `sampling_rate=`, `return_tensors=`, `padding=`).
- Each 30 s window is one `<|AUDIO|>` item; a long recording is several items in the same
  user turn. Ids equal the reference's: each placeholder becomes `window_tokens(samples)`
  copies, counted from real frames; a final window of <= 320 samples gives none, so its
  placeholder vanishes before tokenizing (the text around it merges, as in the reference)
  and a warning says what was left out. Only the text between placeholders is tokenized.
- Log-mel features use the checkpoint's `WhisperFeatureExtractor` settings, computed on each
  window zero-padded only as far as the encoder reads (two frames past the real length plus
  one FFT window): the kept frames equal those of the 30 s padded input, at a fraction of
  the cost for short clips.
- Generation batches pad on the left; training samples supervise only assistant tokens
  (and the `<|im_end|>` that closes them).
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    BatchFeature,
    ProcessorMixin,
    WhisperFeatureExtractor,
)

from aero.audio import (
    HOP_LENGTH,
    MIN_TOKEN_SAMPLES,
    N_FFT,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    AudioError,
    decode_base64_audio,
    duration_seconds,
    load_audio,
    mel_frames,
    split_windows,
    window_tokens,
)
from aero.chat_format import AUDIO_TOKEN, CHAT_TEMPLATE, DEFAULT_SYSTEM_PROMPT, TRANSCRIBE_PROMPT
from aero.modeling import ENCODER_LOOKAHEAD_FRAMES, AeroConfig

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of positions that are not supervised
AUDIO_PART_TYPES = ("audio", "audio_url", "input_audio")


def content_text(content: Any) -> str:
    """The text of a message's content: a string as is, or its text parts joined."""
    if isinstance(content, str):
        return content
    return "".join(
        p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
    )


def is_audio_part(part: dict) -> bool:
    return part.get("type") in AUDIO_PART_TYPES or (
        "type" not in part and any(k in part for k in ("audio", "audio_url"))
    )


def audio_source(part: dict, root: str | os.PathLike | None = None) -> Any:
    """The audio an `audio` / `audio_url` / `input_audio` content part points to."""
    if "audio_url" in part:
        url = part["audio_url"]["url"] if isinstance(part["audio_url"], dict) else part["audio_url"]
        return Path(root) / url if root is not None and not os.path.isabs(url) else url
    if "input_audio" in part:
        spec = part["input_audio"]
        return decode_base64_audio(
            spec.get("data") if isinstance(spec, dict) else None
        )  # None: an error
    if "audio" in part:
        src = part["audio"]
        if root is not None and isinstance(src, str) and not os.path.isabs(src):
            return Path(root) / src
        return src
    raise AudioError(f"Audio content part has no audio: {sorted(part)}.")


def render_segments(
    messages: Sequence[dict], add_generation_prompt: bool, system_prompt: str | None
) -> list[tuple[str, bool]]:
    """The chat format as (text, supervised) pieces; joining the texts gives the prompt.

    Each audio content part renders as one `<|AUDIO|>\\n`; callers expand long audio into
    several parts first. Supervised pieces are assistant contents with their `<|im_end|>`.
    """
    if not messages:
        raise ValueError("A conversation needs at least one message.")
    pieces: list[tuple[str, bool]] = []
    if messages[0].get("role") != "system" and system_prompt:
        pieces.append((f"<|im_start|>system\n{system_prompt}<|im_end|>\n", False))
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"Message role must be system, user or assistant, not {role!r}.")
        if isinstance(content, str):
            body = content
        elif isinstance(content, list):
            body = "".join(
                f"{AUDIO_TOKEN}\n"
                if is_audio_part(p)
                else p.get("text", "")
                if p.get("type") == "text"
                else ""
                for p in content
            )
        else:
            raise ValueError(
                "Message content must be a string or a list of parts, "
                f"not {type(content).__name__}."
            )
        if role == "assistant":
            pieces += [
                ("<|im_start|>assistant\n", False),
                (body + "<|im_end|>", True),
                ("\n", False),
            ]
        else:
            pieces.append((f"<|im_start|>{role}\n{body}<|im_end|>\n", False))
    if add_generation_prompt:
        pieces.append(("<|im_start|>assistant\n", False))
    return pieces


def repeat_audio_parts(messages: Sequence[dict], per_audio: Sequence[int]) -> list[dict]:
    """The k-th audio part becomes per_audio[k] bare audio parts (one per 30 s window)."""
    counts = iter(per_audio)
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                parts += [{"type": "audio"}] * next(counts) if is_audio_part(part) else [part]
            message = {**message, "content": parts}
        out.append(message)
    return out


@dataclass
class AudioWindows:
    """The windows of all audios of one prompt, in placeholder order.

    `tokens` has one count per placeholder (window); a final window too short for one token
    (<= 320 samples) counts 0: its placeholder is removed before tokenizing, as the reference's
    expansion does, and it is left out of `windows`, which holds only windows that give tokens.
    """

    windows: list[np.ndarray] = field(default_factory=list)  # windows that give >= 1 token
    tokens: list[int] = field(
        default_factory=list
    )  # audio tokens of every placeholder, 0 = dropped
    per_audio: list[int] = field(default_factory=list)  # placeholders (windows) of each audio
    durations: list[float] = field(default_factory=list)  # seconds of each audio
    warnings: list[str] = field(default_factory=list)  # what was dropped, one sentence each


class AeroProcessor(ProcessorMixin):
    """Tokenizer + Whisper feature extractor + the Aero chat format, as a transformers processor.

    `AutoProcessor.from_pretrained(path)` resolves to it (after `import aero.processing`); it
    reads and writes the published file set: tokenizer files, `preprocessor_config.json`,
    `processor_config.json` and `chat_template.json`.

    >>> processor = AeroProcessor.from_pretrained("path/to/Aero-1-Audio")
    >>> inputs = processor(messages=[{"role": "user", "content": [
    ...     {"type": "audio", "audio": "talk.mp3"},
    ...     {"type": "text", "text": "Please transcribe the audio"}]}])
    >>> inputs = processor(text=prompt, audios=[wav], sampling_rate=16000, return_tensors="pt",
    ...                    padding=True)
    >>> model.generate(**inputs, max_new_tokens=4096)
    """

    def __init__(
        self,
        tokenizer=None,
        feature_extractor=None,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        audio_token: str = AUDIO_TOKEN,
        audio_stack: int = 1,
        transcribe_prompt: str = TRANSCRIBE_PROMPT,
        chat_template: str | None = None,
    ):
        # A chat template read from a checkpoint is kept (and saved again) for other tools; aero
        # itself renders with `render_segments`, which a test holds equal to the published template.
        super().__init__(tokenizer, feature_extractor, chat_template=chat_template)
        self.transcribe_prompt = (
            transcribe_prompt  # the text sent with audio when a caller gives none
        )
        self.audio_stack = (
            audio_stack  # encoder frames per audio token (the model's projector_stack)
        )
        self.system_prompt = system_prompt
        self.audio_token = audio_token
        # windows -> audio tokens of each, for a projector whose counts depend on the audio (the
        # engine sets it for "ctc" models); None: counts from lengths (`window_tokens`)
        self.token_counter: TokenCounter | None = None
        if self.chat_template is None:
            self.chat_template = self.default_chat_template
        self.audio_token_id = tokenizer.convert_tokens_to_ids(audio_token)
        if self.audio_token_id is None or self.audio_token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"The tokenizer has no {audio_token} token; add it with add_audio_token()."
            )
        if (
            feature_extractor.sampling_rate != SAMPLE_RATE
            or feature_extractor.hop_length != HOP_LENGTH
        ):
            raise ValueError(
                "The feature extractor must use 16 kHz audio and a 160-sample hop (Whisper's)."
            )
        if tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer needs a pad token for batching.")

    # ----- loading and saving -------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, path_or_id: str | os.PathLike, num_mel_bins: int | None = None, **kwargs
    ):
        """Load from a checkpoint directory or a hub id (files as published, or as aero saves them).

        A directory without `preprocessor_config.json` gets Whisper's feature extractor with the
        model config's mel bins; without `audio_stack` in `processor_config.json`, the model
        config's `projector_stack` is used.
        """
        local = Path(path_or_id)
        config = {}
        if (local / "config.json").is_file():
            config = json.loads((local / "config.json").read_text())
        settings = {}
        if (local / "processor_config.json").is_file():
            settings = json.loads((local / "processor_config.json").read_text())
        if "audio_stack" not in settings and config.get("projector_stack"):
            kwargs.setdefault("audio_stack", config["projector_stack"])
        if local.is_dir() and not (local / "preprocessor_config.json").is_file():
            num_mel_bins = num_mel_bins or config.get("audio_config", {}).get("num_mel_bins") or 128
            tokenizer = AutoTokenizer.from_pretrained(local)
            processor_dict, extra = cls.get_processor_dict(local)
            args = [tokenizer, WhisperFeatureExtractor(feature_size=num_mel_bins)]
            return cls.from_args_and_dict(args, processor_dict, **{**extra, **kwargs})
        return super().from_pretrained(path_or_id, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> list[str]:
        """Write the published file set: tokenizer files (with `processor_class`),
        `preprocessor_config.json`, `chat_template.json` and `processor_config.json`."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer._set_processor_class(type(self).__name__)  # as transformers' own save does
        self.tokenizer.save_pretrained(directory)
        self.feature_extractor.save_pretrained(directory)
        (directory / "chat_template.json").write_text(
            json.dumps({"chat_template": self.chat_template}, indent=2) + "\n"
        )
        settings = {
            "processor_class": type(self).__name__,
            "audio_token": self.audio_token,
            "system_prompt": self.system_prompt,
            "audio_stack": self.audio_stack,
            "transcribe_prompt": self.transcribe_prompt,
        }
        (directory / "processor_config.json").write_text(json.dumps(settings, indent=2) + "\n")
        return [str(directory / name) for name in ("processor_config.json", "chat_template.json")]

    @property
    def default_chat_template(self) -> str:
        """The jinja form of `render_segments` with this processor's system prompt."""
        system = json.dumps(self.system_prompt or "")
        return "{% set default_system = " + system + " %}" + CHAT_TEMPLATE

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "audio_values", "audio_attention_mask"]

    # ----- audio --------------------------------------------------------------------------

    def transcription_messages(self, audio: Any, prompt: str | None = None) -> list[dict]:
        """One user turn: the audio, then `prompt` (default: this processor's transcription
        prompt)."""
        text = prompt or self.transcribe_prompt
        return [
            {
                "role": "user",
                "content": [{"type": "audio", "audio": audio}, {"type": "text", "text": text}],
            }
        ]

    def load_windows(
        self, sources: Sequence[Any], sampling_rate: int | None = None
    ) -> AudioWindows:
        """Decode every source and cut it into 30 s windows; a tail that gives no token is dropped
        with a warning, and a source too short for any token is an AudioError."""
        out = AudioWindows()
        for k, source in enumerate(sources):
            samples = load_audio(source, sampling_rate)
            windows = split_windows(samples)
            tokens = [window_tokens(len(w), self.audio_stack) for w in windows]
            if self.token_counter is not None:  # content-dependent counts (a "ctc" projector)
                counted = iter(self.token_counter([w for w, n in zip(windows, tokens) if n]))
                tokens = [next(counted) if n else 0 for n in tokens]
            if not any(window_tokens(len(w), self.audio_stack) for w in windows):
                raise AudioError(
                    f"Audio {k + 1} is {len(samples)} samples "
                    f"({1000 * duration_seconds(samples):.0f} ms) at 16 kHz: "
                    f"too short for one audio token; send at least {MIN_TOKEN_SAMPLES} samples."
                )
            if tokens[-1] == 0 and self.token_counter is None:
                out.warnings.append(
                    f"The last {1000 * len(windows[-1]) / SAMPLE_RATE:.0f} ms of audio {k + 1} "
                    f"({len(windows[-1])} samples after its last 30 s window) "
                    "give no audio token and were left out, as in the reference."
                )
            out.windows += [w for w in windows if window_tokens(len(w), self.audio_stack)]
            out.tokens += tokens
            out.per_audio.append(len(windows))
            out.durations.append(duration_seconds(samples))
        return out

    def audio_features(
        self, windows: Sequence[np.ndarray], pad_to_30s: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows of <= 30 s -> (W, M, T) log-mel and (W, T) mask of real frames.

        T is the longest window's real frames + ENCODER_LOOKAHEAD_FRAMES (capped at 3000): the 2
        frames the encoder's convolutions read past the end (see `encode_audio`).
        `pad_to_30s` gives the reference's T = 3000 for every batch (for comparisons).
        """
        if any(len(w) > N_SAMPLES for w in windows):
            raise AudioError(
                "An audio window is longer than 30 s; split audio with aero.audio.split_windows."
            )
        frames = [mel_frames(len(w)) for w in windows]
        T = N_FRAMES if pad_to_30s else min(max(frames) + ENCODER_LOOKAHEAD_FRAMES, N_FRAMES)
        # Zero-pad far enough that every kept frame's FFT sees the same samples as in the
        # reference's 30 s zero-padded input; a full window gets exactly that input.
        padded = min(T * HOP_LENGTH + N_FFT, N_SAMPLES)
        out = self.feature_extractor(
            list(windows),
            sampling_rate=SAMPLE_RATE,
            padding="max_length",
            max_length=padded,
            return_tensors="pt",
        )
        values = out["input_features"][:, :, :T]
        mask = (torch.arange(T)[None, :] < torch.tensor(frames)[:, None]).long()
        return values, mask

    # ----- prompts ------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_with_audio(self, text: str, tokens: Iterator[int]) -> list[int]:
        """Ids of `text` whose k-th `<|AUDIO|>` becomes next(tokens) copies of the placeholder id.

        As in the reference, placeholders are expanded before tokenizing: one that expands to
        no token disappears and the text around it is tokenized as one piece (its "\n" and the
        next one become Qwen's single "\n\n" id). Only the text between placeholders goes
        through the tokenizer, so a 15-minute prompt never becomes a 22,500-placeholder string.
        """
        ids: list[int] = []
        pieces = text.split(self.audio_token)
        pending = pieces[0]  # text not yet tokenized
        for piece in pieces[1:]:
            n = next(tokens, None)
            if n is None:
                raise ValueError(
                    f"The prompt has more {self.audio_token} placeholders than audio windows; "
                    "pass audio as audio content parts (or one audio per placeholder), not as text."
                )
            if n == 0:
                pending += piece
                continue
            ids += self._encode(pending) + [self.audio_token_id] * n
            pending = piece
        return ids + self._encode(pending)

    def tokens_per_window(self, windows: Sequence[np.ndarray]) -> list[int]:
        return [window_tokens(len(w), self.audio_stack) for w in windows]

    def expand_audio_parts(
        self,
        messages: Sequence[dict],
        root: str | os.PathLike | None = None,
        sampling_rate: int | None = None,
    ) -> tuple[list[dict], AudioWindows]:
        """Load every audio part; a recording of k windows becomes k consecutive audio parts."""
        sources = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                for part in content:
                    if not isinstance(part, dict):
                        raise ValueError(
                            f"Message content parts must be dicts, not {type(part).__name__}."
                        )
                    if is_audio_part(part):
                        sources.append(audio_source(part, root))
        audio = self.load_windows(sources, sampling_rate)
        return repeat_audio_parts(messages, audio.per_audio), audio

    def encode_conversation(
        self,
        messages: Sequence[dict],
        add_generation_prompt: bool = False,
        root: str | os.PathLike | None = None,
        sampling_rate: int | None = None,
    ) -> dict:
        """One conversation -> input_ids, labels (assistant tokens only) and its audio windows."""
        messages, audio = self.expand_audio_parts(messages, root, sampling_rate)
        tokens = iter(audio.tokens)
        ids, labels = [], []
        for text, supervised in render_segments(
            messages, add_generation_prompt, self.system_prompt
        ):
            piece = self.encode_with_audio(text, tokens)
            ids += piece
            labels += [
                IGNORE_INDEX if not supervised or i == self.audio_token_id else i for i in piece
            ]
        if next(tokens, None) is not None:
            raise ValueError(
                f"The conversation has fewer {self.audio_token} placeholders than audio windows."
            )
        return {"input_ids": ids, "labels": labels, "audio": audio}

    def apply_chat_template(
        self, messages: Sequence[dict], add_generation_prompt: bool = True, **kwargs
    ) -> str:
        """The prompt string of one conversation, one placeholder per audio part.

        `tokenize=True` is not supported here: call the processor with `messages=` for ids.
        """
        if kwargs.pop("tokenize", False):
            raise ValueError(
                "AeroProcessor.apply_chat_template returns the prompt text; "
                "for ids call processor(messages=...)."
            )
        kwargs.pop("return_dict", None)
        if kwargs:
            raise TypeError(
                f"apply_chat_template got unexpected arguments: {', '.join(sorted(kwargs))}."
            )
        return "".join(
            t for t, _ in render_segments(messages, add_generation_prompt, self.system_prompt)
        )

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        audio: Any = None,
        sampling_rate: int | None = None,
        messages: Sequence[dict] | Sequence[Sequence[dict]] | None = None,
        add_generation_prompt: bool = True,
        padding_side: str = "left",
        root: str | os.PathLike | None = None,
        return_tensors: str | None = "pt",
        padding: bool | str = True,
        audios: Any = None,
        **kwargs,
    ) -> BatchFeature:
        """Model inputs for generation (or a forward pass) of one prompt or a batch.

        Either `messages` (one conversation or a list of them; audio parts are loaded) or
        `text` (a string or a list) with one `<|AUDIO|>` per entry of `audio` (alias `audios`,
        the reference's name). Audio longer than 30 s becomes several windows: in `text` mode
        its placeholder is repeated, as the chat format would write it.

        `padding`: True / "longest" (default; to the longest prompt, on `padding_side`), False /
        "do_not_pad" (prompts of one length only, or `return_tensors=None`) or "max_length"
        with `max_length`. Prompts are never truncated. `return_tensors`: "pt", "np" or None
        (lists).
        """
        max_length = kwargs.pop("max_length", None)
        if kwargs.pop("truncation", False):
            raise ValueError(
                "AeroProcessor never truncates prompts: audio tokens would be cut; "
                "pass shorter audio."
            )
        kwargs.pop("return_attention_mask", None)
        if kwargs:
            raise TypeError(f"AeroProcessor got unexpected arguments: {', '.join(sorted(kwargs))}.")
        if audio is not None and audios is not None:
            raise ValueError("Pass audio or audios (the same thing), not both.")
        audio = audios if audio is None else audio
        if (text is None) == (messages is None):
            raise ValueError("Pass either text (with audio) or messages.")
        if messages is not None:
            if audio is not None:
                raise ValueError(
                    "With messages, put the audio in the messages' audio content parts, "
                    "not in audio=."
                )
            samples, windows, warnings = self._encode_messages(
                messages, add_generation_prompt, root, sampling_rate
            )
        else:
            samples, windows, warnings = self._encode_texts(text, audio, sampling_rate)
        for warning in warnings:
            log.warning(warning)
        out = self.pad(
            samples,
            padding_side=padding_side,
            padding=padding,
            max_length=max_length,
            as_tensors=return_tensors is not None,
        )
        if windows:
            out["audio_values"], out["audio_attention_mask"] = self.audio_features(windows)
        return BatchFeature(out, tensor_type=return_tensors)

    def _encode_messages(self, messages, add_generation_prompt, root, sampling_rate):
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError(
                "messages must be a conversation (a list of message dicts) "
                "or a list of conversations."
            )
        batch = [messages] if isinstance(messages[0], dict) else list(messages)
        samples, windows, warnings = [], [], []
        for conversation in batch:
            encoded = self.encode_conversation(
                conversation, add_generation_prompt, root, sampling_rate
            )
            samples.append(encoded["input_ids"])
            windows += encoded["audio"].windows
            warnings += encoded["audio"].warnings
        return samples, windows, warnings

    def _encode_texts(self, text, audio, sampling_rate):
        if isinstance(text, str):
            texts = [text]
        elif isinstance(text, (list, tuple)) and text and all(isinstance(t, str) for t in text):
            texts = list(text)
        else:
            raise ValueError("text must be a string or a non-empty list of strings.")
        if audio is None:
            sources = []
        elif isinstance(audio, (list, tuple)) and not (
            isinstance(audio, tuple) and len(audio) == 2 and isinstance(audio[1], int)
        ):
            sources = list(audio)
        else:
            sources = [audio]  # one array, path, bytes or (array, rate)
        loaded = self.load_windows(sources, sampling_rate)
        n_placeholders = sum(t.count(self.audio_token) for t in texts)
        if n_placeholders != len(loaded.per_audio):
            raise ValueError(
                f"The text has {n_placeholders} {self.audio_token} placeholders "
                f"but {len(loaded.per_audio)} audios were given."
            )
        per_audio, tokens = iter(loaded.per_audio), iter(loaded.tokens)
        samples = []
        for t in texts:
            pieces = t.split(self.audio_token)
            joined = pieces[0] + "".join(
                "\n".join([self.audio_token] * next(per_audio)) + p for p in pieces[1:]
            )
            samples.append(self.encode_with_audio(joined, tokens))
        return samples, loaded.windows, loaded.warnings

    def pad(
        self,
        samples: Sequence[Sequence[int]],
        labels: Sequence[Sequence[int]] | None = None,
        padding_side: str = "left",
        padding: bool | str = True,
        max_length: int | None = None,
        as_tensors: bool = True,
    ) -> dict:
        """Pad id lists to one (B, L) batch with an attention mask (and labels, padded with -100).

        `padding` as in transformers (True/"longest", False/"do_not_pad", "max_length" with
        `max_length`); `as_tensors=False` returns lists (unpadded ones when padding is off).
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}.")
        mode = {True: "longest", False: "do_not_pad"}.get(padding, padding)
        if mode not in ("longest", "do_not_pad", "max_length"):
            raise ValueError(
                "padding must be True, False, 'longest', 'do_not_pad' or 'max_length', "
                f"not {padding!r}."
            )
        longest = max(len(s) for s in samples)
        if mode == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length.")
            if max_length < longest:
                raise ValueError(
                    f"A prompt has {longest} tokens, more than max_length={max_length}; "
                    "aero never truncates."
                )
            L = max_length
        elif mode == "do_not_pad":
            if as_tensors and len({len(s) for s in samples}) > 1:
                raise ValueError(
                    "Prompts of different lengths need padding=True to become one tensor "
                    "(or return_tensors=None)."
                )
            if not as_tensors:
                out = {
                    "input_ids": [list(s) for s in samples],
                    "attention_mask": [[1] * len(s) for s in samples],
                }
                if labels is not None:
                    out["labels"] = [list(lab) for lab in labels]
                return out
            L = longest
        else:
            L = longest
        pad_id = self.tokenizer.pad_token_id
        ids = torch.full((len(samples), L), pad_id, dtype=torch.long)
        mask = torch.zeros((len(samples), L), dtype=torch.long)
        lab = (
            torch.full((len(samples), L), IGNORE_INDEX, dtype=torch.long)
            if labels is not None
            else None
        )
        for row, s in enumerate(samples):
            span = slice(L - len(s), L) if padding_side == "left" else slice(0, len(s))
            ids[row, span] = torch.tensor(s, dtype=torch.long)
            mask[row, span] = 1
            if lab is not None:
                lab[row, span] = torch.tensor(labels[row], dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": mask}
        if lab is not None:
            out["labels"] = lab
        return out if as_tensors else {k: v.tolist() for k, v in out.items()}

    def batch_decode(self, ids, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)

    def decode(self, ids, skip_special_tokens: bool = True, **kwargs) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)


class TokenCounter:
    """Counts audio tokens per window through a `CompressedAudio` store; held by a processor but
    not part of its saved state (copying a processor shares it, as it shares the model)."""

    def __init__(self, store: CompressedAudio):
        self.store = store

    def __call__(self, windows: Sequence[np.ndarray]) -> list[int]:
        return self.store.count(windows)

    def __deepcopy__(self, memo) -> TokenCounter:
        return self


class CompressedAudio:
    """Audio inputs of a "ctc" projector, whose token count per window depends on the audio:
    counting computes the emissions, and the prefill (or training step) takes the same tensors
    (computing them again in another batch could move a near-tie between blank and token, and
    with it the count). Each window's summary token is made when its inputs are taken, so it
    trains in the LM stage while the emissions come from the frozen connector."""

    def __init__(self, model, processor: AeroProcessor, keep: int = 8192):
        self.model, self.processor, self.keep = model, processor, keep
        # id -> (window, mean, emissions, CTC posteriors or None)
        self._done: OrderedDict[int, tuple] = OrderedDict()
        # keep each window's CTC posteriors for joint decoding (an Engine turns this on)
        self.posteriors = False

    @torch.no_grad()
    def count(self, windows: Sequence[np.ndarray]) -> list[int]:
        if not windows:
            return []
        device = next(self.model.parameters()).device
        values, frames = self.processor.audio_features(windows)
        training = self.model.training
        self.model.eval()  # no dropout: the emissions are the connector's own (a frozen part)
        try:
            encoded = self.model.encode_windows(values.to(device), frames.to(device))
            parts = self.model.ctc_parts(encoded, self.posteriors)
        finally:
            self.model.train(training)
        for window, part in zip(windows, parts):
            self._done[id(window)] = (window, part.mean, part.emitted, part.posteriors)
            self._done.move_to_end(id(window))
        while len(self._done) > self.keep:
            self._done.popitem(last=False)
        return [1 + part.emitted.shape[0] for part in parts]

    def features(self, windows: Sequence[np.ndarray]) -> torch.Tensor:
        """(N, H) inputs of the windows, in order, as counted."""
        return self.take(windows)[0]

    def take(self, windows: Sequence[np.ndarray]) -> tuple[torch.Tensor, list]:
        """`features`, and each window's CTC posteriors (None unless `posteriors` is on)."""
        missing = [w for w in windows if self._done.get(id(w), (None,))[0] is not w]
        if missing:
            self.count(missing)  # not counted through this engine's processor: count now
        summary = self.model.audio_modal_projector.summary
        taken: dict[int, tuple] = {}
        for w in windows:  # each is used once, so it leaves the store
            if id(w) not in taken:
                _, pooled, emitted, posteriors = self._done.pop(id(w))
                inputs = torch.cat([summary(pooled)[None], emitted.to(pooled.dtype)])
                taken[id(w)] = (inputs, posteriors)
        parts = [taken[id(w)] for w in windows]
        return torch.cat([inputs for inputs, _ in parts]), [post for _, post in parts]


def count_audio_tokens_with(model, processor: AeroProcessor) -> CompressedAudio | None:
    """For a model whose audio token count depends on the audio (projector_type "ctc"): make the
    processor count with it, and return the store its prefill/training step reads the audio
    inputs from. None for every other model (counts follow the audio's length)."""
    if getattr(model.config, "projector_type", None) != "ctc":
        return None
    current = processor.token_counter
    if current is not None and current.store.model is model:
        return current.store  # one store per model and processor: counted ids meet their inputs
    compressed = CompressedAudio(model, processor)
    processor.token_counter = TokenCounter(compressed)
    return compressed


def add_audio_token(tokenizer) -> int:
    """Add `<|AUDIO|>` as a special token if missing; returns its id."""
    if AUDIO_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [AUDIO_TOKEN]}, replace_extra_special_tokens=False
        )
    return tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)


AutoProcessor.register(AeroConfig, AeroProcessor, exist_ok=True)
