"""Audio in: decoding, resampling, downmixing and 30-second windows.

Notable choices:
- Every source becomes 16 kHz mono float32. soundfile (libsndfile) decodes wav/flac/ogg
  fastest; anything it refuses (mp3, m4a/aac, opus, audio inside video containers) goes
  through PyAV, which bundles FFmpeg, so no system codecs are needed.
- Resampling uses soxr ("HQ"), downmixing is the mean of the channels.
- Long audio is never truncated: it is cut into consecutive 30 s windows, each of which
  becomes its own audio item for the encoder. Tokens are counted from real frames only, as
  in the reference: a final window of <= 320 samples (2 mel frames, 20 ms) gives 0 tokens,
  and the processor drops it with a warning rather than padding it into tokens of silence.
- Errors a user can cause (missing file, not audio, empty audio, NaN/Inf samples) raise
  `AudioError` with one sentence that names the source.
"""

from __future__ import annotations

import base64
import io
import math
import os
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 16_000  # Hz, what the Whisper encoder was trained on
HOP_LENGTH = 160  # samples between mel frames: 10 ms
N_FFT = 400  # samples per STFT window: 25 ms
CHUNK_LENGTH = 30  # seconds per encoder window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples per window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames per window
MIN_TOKEN_SAMPLES = (
    2 * HOP_LENGTH + 1
)  # 321 samples (20 ms): a window needs 3 mel frames for one token

AudioSource = Union[
    str, os.PathLike, bytes, bytearray, io.IOBase, np.ndarray, "torch.Tensor", tuple, dict
]


# Mel frames the encoder's convolutions read past a window's last real frame (conv1, k=3, reads
# one; conv2, k=3 stride 2, one more): inputs are cut this far past the real length, not to 3000.
ENCODER_LOOKAHEAD_FRAMES = 2


class AudioError(ValueError):
    """A user-supplied audio source that cannot be used; the message names the source."""


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"'{os.fspath(source)}'"
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array shape={source.shape}>"
    return f"<{type(source).__name__}>"


def _decode_soundfile(data: Any) -> tuple[np.ndarray, int]:
    import soundfile as sf

    samples, sr = sf.read(data, dtype="float32", always_2d=True)  # (n, channels)
    return samples.T, sr


def _decode_pyav(data: Any) -> tuple[np.ndarray, int]:
    import av

    with av.open(data, mode="r") as container:
        if not container.streams.audio:
            raise AudioError("has no audio stream")
        stream = container.streams.audio[0]
        # Resample inside FFmpeg to planar float32, keeping the native rate and channels;
        # soxr does the rate conversion afterwards for one consistent quality.
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=stream.rate)
        chunks = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
        channels = (
            stream.layout.nb_channels
            if hasattr(stream.layout, "nb_channels")
            else len(stream.layout.channels)
        )
        samples = np.concatenate(chunks, axis=1) if chunks else np.zeros((channels, 0), np.float32)
        return samples.astype(np.float32, copy=False), stream.rate


def _decode(source: Any, name: str) -> tuple[np.ndarray, int]:
    """Decode a path, bytes or file object into (channels, samples) float32 and its rate."""
    if isinstance(source, (bytes, bytearray)):
        make = lambda: io.BytesIO(bytes(source))  # noqa: E731 - a fresh reader per decoder
    elif isinstance(source, io.IOBase):
        payload = source.read()
        make = lambda: io.BytesIO(payload)  # noqa: E731
    else:
        path = os.fspath(source)
        if not os.path.exists(path):
            raise AudioError(f"Audio file {name} does not exist.")
        if os.path.isdir(path):
            raise AudioError(f"Audio source {name} is a directory, not an audio file.")
        make = lambda: path  # noqa: E731
    try:
        return _decode_soundfile(make())
    except AudioError:
        raise
    except Exception:
        pass  # not a libsndfile format: try FFmpeg
    try:
        return _decode_pyav(make())
    except AudioError as err:
        raise AudioError(f"Audio source {name} {err}.") from None
    except Exception as err:
        raise AudioError(
            f"Audio source {name} could not be decoded as audio ({type(err).__name__}: {err})."
        ) from None


def decode_base64_audio(data: str | bytes | None) -> bytes:
    """Base64 text (the `data` of an OpenAI `input_audio` part) -> the audio file's bytes."""
    if data is None:
        raise AudioError("input_audio content is not valid base64 audio data (it has no 'data').")
    try:
        return base64.b64decode(data, validate=True)
    except (TypeError, ValueError) as err:  # binascii.Error is a ValueError
        raise AudioError(f"input_audio content is not valid base64 audio data ({err}).") from None


def _to_mono(samples: np.ndarray, name: str) -> np.ndarray:
    """(n,) or (channels, n) or (n, channels) -> (n,). The shorter axis is taken as channels."""
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise AudioError(f"Audio array {name} must be 1-D (samples) or 2-D (channels x samples).")
    if samples.size == 0:
        return samples.reshape(-1)
    if samples.shape[0] > samples.shape[1]:
        samples = samples.T
    return samples.mean(axis=0)


def resample(samples: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    if orig_sr == target_sr:
        return samples
    import soxr

    return soxr.resample(samples, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def load_audio(source: AudioSource, sampling_rate: int | None = None) -> np.ndarray:
    """Any audio source -> 16 kHz mono float32 samples, shape (n,).

    `source` is a path, bytes, a binary file object, an array/tensor (with `sampling_rate`,
    default 16 kHz), a `(array, sampling_rate)` tuple, or a datasets-style dict
    `{"array": ..., "sampling_rate": ...}` (or `{"path": ...}` / `{"bytes": ...}`).
    """
    name = _describe(source)
    if isinstance(source, dict):
        if source.get("array") is not None:
            return load_audio(source["array"], source.get("sampling_rate", sampling_rate))
        if source.get("bytes") is not None:
            return load_audio(source["bytes"])
        if source.get("path") is not None:
            return load_audio(source["path"])
        raise AudioError(
            "Audio dict needs an 'array' (with 'sampling_rate'), 'bytes' or 'path' entry."
        )
    if isinstance(source, tuple):
        if len(source) != 2:
            raise AudioError("Audio tuple must be (samples, sampling_rate).")
        return load_audio(source[0], source[1])
    if type(source).__module__.startswith("torch"):
        source = source.detach().cpu().float().numpy()
    if isinstance(source, np.ndarray):
        if not np.issubdtype(source.dtype, np.number):
            raise AudioError(f"Audio array {name} has non-numeric dtype {source.dtype}.")
        samples = _to_mono(np.asarray(source, dtype=np.float32), name)
        sr = sampling_rate or SAMPLE_RATE
    elif isinstance(source, (str, os.PathLike, bytes, bytearray, io.IOBase)):
        decoded, sr = _decode(source, name)
        samples = (
            decoded.mean(axis=0) if decoded.shape[1] else decoded.reshape(-1)
        )  # channels, n -> n
    else:
        raise AudioError(
            f"Unsupported audio source type {type(source).__name__}: "
            "pass a path, bytes, file object or array."
        )
    if samples.size == 0:
        raise AudioError(f"Audio source {name} contains no samples (zero-length audio).")
    if not np.isfinite(samples).all():
        raise AudioError(f"Audio source {name} contains NaN or Inf samples.")
    if sr <= 0:
        raise AudioError(f"Audio source {name} has an invalid sampling rate {sr}.")
    return np.ascontiguousarray(resample(samples, int(sr)), dtype=np.float32)


def duration_seconds(samples: np.ndarray) -> float:
    """Seconds of 16 kHz audio."""
    return len(samples) / SAMPLE_RATE


def split_windows(samples: np.ndarray) -> list[np.ndarray]:
    """Cut audio into consecutive 30 s windows, each at its real length (the last may be short)."""
    return [
        samples[start : start + N_SAMPLES] for start in range(0, max(len(samples), 1), N_SAMPLES)
    ]


def mel_frames(n_samples: int) -> int:
    """Real mel frames of a window of `n_samples` (what Whisper's attention mask counts)."""
    return min(math.ceil(n_samples / HOP_LENGTH), N_FRAMES)


def encoder_output_lengths(frames, stack: int = 1):
    """THE frames -> tokens arithmetic; every other place calls this.

    Works on ints and on integer tensors. For `frames` real mel frames of one window:
      conv2 (stride 2):        positions = (frames - 1) // 2 + 1      # 3000 -> 1500
      average pool (2, 2):     pooled    = (positions - 2) // 2 + 1   # 1500 -> 750
      stacking `stack` frames: tokens    = ceil(pooled / stack)       # 750 -> 750 (stack 1)
    i.e. 25 audio tokens per second (40 ms per token) at stack 1, as published; a model may
    stack adjacent frames before its projector (the last group zero-padded, never dropped).
    """
    positions = (frames - 1) // 2 + 1
    pooled = (positions - 2) // 2 + 1
    return positions, (pooled + stack - 1) // stack


def length_groups(lengths, slack: float = 1.1) -> list[list[tuple[int, int]]]:
    """Windows sorted by length, cut into groups whose longest is <= slack x their shortest
    (+2): [(index, length), ...] per group. The encoder (`encode_windows`, vLLM's audio path)
    and the "ctc" connector run one batch per group: few calls, little padding."""
    groups: list[list[tuple[int, int]]] = []
    for item in sorted(enumerate(lengths), key=lambda p: p[1]):
        if groups and item[1] <= slack * groups[-1][0][1] + 2:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def in_length_groups(lengths, run) -> list:
    """`run(group)` once per `length_groups(lengths)` group, returning one result per (index,
    length) of the group -> all results in input order."""
    out: list = [None] * len(lengths)
    for group in length_groups(lengths):
        for (i, _), result in zip(group, run(group)):
            out[i] = result
    return out


def window_tokens(n_samples: int, stack: int = 1) -> int:
    """Audio tokens of one window of `n_samples` samples (0 for <= 320 samples, as in the
    reference)."""
    return int(encoder_output_lengths(mel_frames(n_samples), stack)[1])


def audio_tokens_per_second(stack: int = 1) -> float:
    """LM positions one second of audio takes: a full window's tokens / 30 s (25, or 188/30 at
    stack 4)."""
    return window_tokens(N_SAMPLES, stack) / CHUNK_LENGTH


def audio_tokens_for_samples(n_samples: int, stack: int = 1) -> list[int]:
    """Audio tokens of each 30 s window of a recording of `n_samples` samples (a last 0 is dropped
    by the processor)."""
    return [
        window_tokens(min(N_SAMPLES, n_samples - start), stack)
        for start in range(0, max(n_samples, 1), N_SAMPLES)
    ]
