"""AeroProcessor: audio -> log-mel windows, chat prompt -> token ids with expanded placeholders.

Notable choices:
- One renderer (`render_segments`) produces the chat format for inference AND training; the
  jinja template saved with a checkpoint is the same format, for other tools (a test keeps
  the two equal). A system turn is inserted when the conversation does not start with one.
- Each 30 s window is one `<|AUDIO|>` item; a long recording is several items in the same
  user turn. Placeholders are expanded in id space, one window at a time, to exactly
  `encoder_output_lengths(mel frames)[1]` ids, so a 15-minute prompt never becomes a
  22,500-placeholder string.
- Log-mel features use the checkpoint's `WhisperFeatureExtractor` settings, computed on each
  window zero-padded only as far as the encoder reads (two frames past the real length plus
  one FFT window): the kept frames equal those of the 30 s padded input, at a fraction of
  the cost for short clips.
- Generation batches pad on the left; training samples supervise only assistant tokens
  (and the `<|im_end|>` that closes them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from transformers import AutoTokenizer, BatchFeature, WhisperFeatureExtractor

from aero.audio import (
    HOP_LENGTH,
    N_FFT,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    AudioError,
    encoder_output_lengths,
    load_audio,
    mel_frames,
    split_windows,
)
from aero.modeling import AUDIO_TOKEN

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
TRANSCRIBE_PROMPT = "Please transcribe the audio"
IGNORE_INDEX = -100  # label of positions that are not supervised
AUDIO_PART_TYPES = ("audio", "audio_url", "input_audio")

# The reference chat format as a jinja template, saved beside checkpoints for other tools.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' and default_system %}"
    "<|im_start|>system\n{{ default_system }}<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('audio', 'audio_url', 'input_audio') %}<|AUDIO|>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def content_text(content: Any) -> str:
    """The text of a message's content: a string as is, or its text parts joined."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")


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
        import base64
        import binascii

        try:
            return base64.b64decode(part["input_audio"]["data"], validate=True)
        except (binascii.Error, KeyError, TypeError) as err:
            raise AudioError(f"input_audio content is not valid base64 audio data ({err}).") from None
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
                f"{AUDIO_TOKEN}\n" if is_audio_part(p) else p.get("text", "") if p.get("type") == "text" else ""
                for p in content
            )
        else:
            raise ValueError(f"Message content must be a string or a list of parts, not {type(content).__name__}.")
        if role == "assistant":
            pieces += [("<|im_start|>assistant\n", False), (body + "<|im_end|>", True), ("\n", False)]
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
    """The windows of all audios of one prompt, in placeholder order."""

    windows: list[np.ndarray] = field(default_factory=list)
    per_audio: list[int] = field(default_factory=list)  # windows of each audio
    durations: list[float] = field(default_factory=list)  # seconds of each audio


class AeroProcessor:
    """Tokenizer + Whisper feature extractor + the Aero chat format.

    >>> processor = AeroProcessor.from_pretrained("path/to/Aero-1-Audio")
    >>> inputs = processor(messages=[{"role": "user", "content": [
    ...     {"type": "audio", "audio": "talk.mp3"}, {"type": "text", "text": "Please transcribe the audio"}]}])
    >>> model.generate(**inputs, max_new_tokens=4096)
    """

    def __init__(
        self,
        tokenizer,
        feature_extractor: WhisperFeatureExtractor,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        audio_token: str = AUDIO_TOKEN,
        audio_stack: int = 1,
        transcribe_prompt: str = TRANSCRIBE_PROMPT,
    ):
        self.tokenizer = tokenizer
        self.transcribe_prompt = transcribe_prompt  # the text sent with audio when a caller gives none
        self.audio_stack = audio_stack  # encoder frames per audio token (the model's projector_stack)
        self.feature_extractor = feature_extractor
        self.system_prompt = system_prompt
        self.audio_token = audio_token
        self.audio_token_id = tokenizer.convert_tokens_to_ids(audio_token)
        if self.audio_token_id is None or self.audio_token_id == tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no {audio_token} token; add it with add_audio_token().")
        if feature_extractor.sampling_rate != SAMPLE_RATE or feature_extractor.hop_length != HOP_LENGTH:
            raise ValueError("The feature extractor must use 16 kHz audio and a 160-sample hop (Whisper's).")
        if tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer needs a pad token for batching.")

    # ----- loading and saving -------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, num_mel_bins: int | None = None, **kwargs):
        """Load from a checkpoint directory (or a hub id, passed to transformers unchanged)."""
        tokenizer = AutoTokenizer.from_pretrained(path_or_id, **kwargs)
        local = Path(path_or_id)
        settings = {}
        if (local / "processor_config.json").is_file():
            settings = json.loads((local / "processor_config.json").read_text())
        if local.is_dir() and not (local / "preprocessor_config.json").is_file():
            if num_mel_bins is None and (local / "config.json").is_file():
                config = json.loads((local / "config.json").read_text())
                num_mel_bins = config.get("audio_config", {}).get("num_mel_bins")
            feature_extractor = WhisperFeatureExtractor(feature_size=num_mel_bins or 128)
        else:
            feature_extractor = WhisperFeatureExtractor.from_pretrained(path_or_id, **kwargs)
        system_prompt = settings.get("system_prompt", DEFAULT_SYSTEM_PROMPT)
        stack = settings.get("audio_stack")
        if stack is None and (local / "config.json").is_file():
            stack = json.loads((local / "config.json").read_text()).get("projector_stack")
        transcribe_prompt = settings.get("transcribe_prompt", TRANSCRIBE_PROMPT)
        return cls(tokenizer, feature_extractor, system_prompt=system_prompt, audio_stack=stack or 1,
                   transcribe_prompt=transcribe_prompt)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        self.feature_extractor.save_pretrained(directory)
        (directory / "chat_template.jinja").write_text(self.chat_template)
        settings = {"processor_class": "AeroProcessor", "audio_token": self.audio_token}
        settings["system_prompt"] = self.system_prompt
        settings["audio_stack"] = self.audio_stack
        settings["transcribe_prompt"] = self.transcribe_prompt
        (directory / "processor_config.json").write_text(json.dumps(settings, indent=2) + "\n")

    @property
    def chat_template(self) -> str:
        """The jinja form of `render_segments` with this processor's system prompt."""
        system = json.dumps(self.system_prompt or "")
        return "{% set default_system = " + system + " %}" + CHAT_TEMPLATE

    # ----- audio --------------------------------------------------------------------------

    def transcription_messages(self, audio: Any, prompt: str | None = None) -> list[dict]:
        """One user turn: the audio, then `prompt` (default: this processor's transcription prompt)."""
        text = prompt or self.transcribe_prompt
        return [{"role": "user", "content": [{"type": "audio", "audio": audio}, {"type": "text", "text": text}]}]

    def load_windows(self, sources: Sequence[Any], sampling_rate: int | None = None) -> AudioWindows:
        out = AudioWindows()
        for source in sources:
            samples = load_audio(source, sampling_rate)
            windows = split_windows(samples)
            out.windows += windows
            out.per_audio.append(len(windows))
            out.durations.append(len(samples) / SAMPLE_RATE)
        return out

    def audio_features(
        self, windows: Sequence[np.ndarray], pad_to_30s: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows of <= 30 s -> (W, M, T) log-mel and (W, T) mask of real frames.

        T is the longest window's real frames + 2 (capped at 3000): the two extra frames are
        the ones the encoder's convolutions read past the end (see `encode_audio`).
        `pad_to_30s` gives the reference's T = 3000 for every batch (for comparisons).
        """
        if any(len(w) > N_SAMPLES for w in windows):
            raise AudioError("An audio window is longer than 30 s; split audio with aero.audio.split_windows.")
        frames = [mel_frames(len(w)) for w in windows]
        T = N_FRAMES if pad_to_30s else min(max(frames) + 2, N_FRAMES)
        # Zero-pad far enough that every kept frame's FFT sees the same samples as in the
        # reference's 30 s zero-padded input; a full window gets exactly that input.
        padded = min(T * HOP_LENGTH + N_FFT, N_SAMPLES)
        out = self.feature_extractor(
            list(windows), sampling_rate=SAMPLE_RATE, padding="max_length", max_length=padded, return_tensors="pt"
        )
        values = out["input_features"][:, :, :T]
        mask = (torch.arange(T)[None, :] < torch.tensor(frames)[:, None]).long()
        return values, mask

    # ----- prompts ------------------------------------------------------------------------

    def _expand(
        self, ids: list[int], tokens_per_window: list[int], labels: list[int] | None = None
    ) -> tuple[list[int], list[int] | None]:
        """Replace the k-th placeholder id by tokens_per_window[k] copies (labels: -100 copies)."""
        out_ids: list[int] = []
        out_labels: list[int] | None = [] if labels is not None else None
        k = 0
        for pos, i in enumerate(ids):
            n = 1
            if i == self.audio_token_id:
                if k >= len(tokens_per_window):
                    raise ValueError(
                        f"The prompt has more {self.audio_token} placeholders than audio windows "
                        f"({len(tokens_per_window)}); pass audio as audio content parts, not as text."
                    )
                n, k = tokens_per_window[k], k + 1
            out_ids += [i] * n
            if out_labels is not None:
                out_labels += [IGNORE_INDEX if i == self.audio_token_id else labels[pos]] * n
        if k != len(tokens_per_window):
            raise ValueError(
                f"The prompt has {k} {self.audio_token} placeholders but the audio gives {len(tokens_per_window)} windows."
            )
        return out_ids, out_labels

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def tokens_per_window(self, windows: Sequence[np.ndarray]) -> list[int]:
        return [int(encoder_output_lengths(mel_frames(len(w)), self.audio_stack)[1]) for w in windows]

    def expand_audio_parts(
        self, messages: Sequence[dict], root: str | os.PathLike | None = None, sampling_rate: int | None = None
    ) -> tuple[list[dict], AudioWindows]:
        """Load every audio part; a recording of k windows becomes k consecutive audio parts."""
        sources = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                for part in content:
                    if not isinstance(part, dict):
                        raise ValueError(f"Message content parts must be dicts, not {type(part).__name__}.")
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
        ids, labels = [], []
        for text, supervised in render_segments(messages, add_generation_prompt, self.system_prompt):
            piece = self._encode(text)
            ids += piece
            labels += piece if supervised else [IGNORE_INDEX] * len(piece)
        ids, labels = self._expand(ids, self.tokens_per_window(audio.windows), labels)
        return {"input_ids": ids, "labels": labels, "audio": audio}

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The prompt string of one conversation, one placeholder per audio part."""
        return "".join(t for t, _ in render_segments(messages, add_generation_prompt, self.system_prompt))

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        audios: Sequence[Any] | None = None,
        sampling_rate: int | None = None,
        *,
        messages: Sequence[dict] | Sequence[Sequence[dict]] | None = None,
        add_generation_prompt: bool = True,
        padding_side: str = "left",
        root: str | os.PathLike | None = None,
    ) -> BatchFeature:
        """Model inputs for generation (or a forward pass) of one prompt or a batch.

        Either `messages` (one conversation or a list of them; audio parts are loaded) or
        `text` with one `<|AUDIO|>` per entry of `audios` (the reference's call). Audio longer
        than 30 s becomes several windows: in `text` mode its placeholder is repeated, as the
        chat format would write it.
        """
        if (text is None) == (messages is None):
            raise ValueError("Pass either text (with audios) or messages.")
        samples: list[list[int]] = []
        windows: list[np.ndarray] = []
        if messages is not None:
            batch = [messages] if messages and isinstance(messages[0], dict) else list(messages)
            for conversation in batch:
                encoded = self.encode_conversation(conversation, add_generation_prompt, root, sampling_rate)
                samples.append(encoded["input_ids"])
                windows += encoded["audio"].windows
        else:
            texts = [text] if isinstance(text, str) else list(text)
            audio = self.load_windows(list(audios or []), sampling_rate)
            n_placeholders = sum(t.count(self.audio_token) for t in texts)
            if n_placeholders != len(audio.per_audio):
                raise ValueError(
                    f"The text has {n_placeholders} {self.audio_token} placeholders but {len(audio.per_audio)} audios were given."
                )
            counts = iter(audio.per_audio)
            tokens = iter(self.tokens_per_window(audio.windows))
            for t in texts:
                pieces = t.split(self.audio_token)
                joined = pieces[0]
                for piece in pieces[1:]:
                    joined += "\n".join([self.audio_token] * next(counts)) + piece
                ids = self._encode(joined)
                n = ids.count(self.audio_token_id)
                samples.append(self._expand(ids, [next(tokens) for _ in range(n)])[0])
            windows = audio.windows
        out = self.pad(samples, padding_side=padding_side)
        if windows:
            out["audio_values"], out["audio_attention_mask"] = self.audio_features(windows)
        return BatchFeature(out)

    def pad(
        self, samples: Sequence[Sequence[int]], labels: Sequence[Sequence[int]] | None = None, padding_side: str = "left"
    ) -> dict:
        """Pad id lists to one (B, L) tensor with an attention mask (and labels, padded with -100)."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}.")
        L = max(len(s) for s in samples)
        pad_id = self.tokenizer.pad_token_id
        ids = torch.full((len(samples), L), pad_id, dtype=torch.long)
        mask = torch.zeros((len(samples), L), dtype=torch.long)
        lab = torch.full((len(samples), L), IGNORE_INDEX, dtype=torch.long) if labels is not None else None
        for row, s in enumerate(samples):
            span = slice(L - len(s), L) if padding_side == "left" else slice(0, len(s))
            ids[row, span] = torch.tensor(s, dtype=torch.long)
            mask[row, span] = 1
            if lab is not None:
                lab[row, span] = torch.tensor(labels[row], dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": mask}
        if lab is not None:
            out["labels"] = lab
        return out

    def batch_decode(self, ids, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)

    def decode(self, ids, skip_special_tokens: bool = True, **kwargs) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)


def add_audio_token(tokenizer) -> int:
    """Add `<|AUDIO|>` as a special token if missing; returns its id."""
    if AUDIO_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [AUDIO_TOKEN]}, replace_extra_special_tokens=False)
    return tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
