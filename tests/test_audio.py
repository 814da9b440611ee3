"""Audio decoding, resampling, windows and the frames -> tokens arithmetic."""

import io

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from aero.audio import (
    N_SAMPLES,
    SAMPLE_RATE,
    AudioError,
    audio_tokens_for_samples,
    encoder_output_lengths,
    load_audio,
    mel_frames,
    split_windows,
    window_tokens,
)
from conftest import tone


def dominant_freq(x: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(x))
    return np.fft.rfftfreq(len(x), 1 / sr)[spectrum.argmax()]


def encode_pyav(
    path, samples: np.ndarray, sr: int, container: str, codec: str, video: bool = False
):
    """Write stereo `samples` with FFmpeg (through PyAV), optionally beside a video stream."""
    with av.open(str(path), "w", format=container) as out:
        # A muxer writes its header once: add every stream before encoding any.
        vstream = out.add_stream("mpeg4", rate=10) if video else None
        astream = out.add_stream(codec, rate=sr, layout="stereo")
        if vstream is not None:
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
            for i in range(5):
                frame = av.VideoFrame.from_ndarray(
                    np.full((48, 64, 3), i * 40, np.uint8), format="rgb24"
                )
                frame.pts = i
                out.mux(vstream.encode(frame))
            out.mux(vstream.encode(None))
        frame = av.AudioFrame.from_ndarray(
            np.stack([samples, samples]).astype(np.float32), format="fltp", layout="stereo"
        )
        frame.sample_rate, frame.pts = sr, 0
        out.mux(astream.encode(frame))
        out.mux(astream.encode(None))


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg"])
def test_soundfile_formats_resampled_to_16k_mono(tmp_path, fmt):
    sr, seconds = 44100, 1.5
    stereo = np.stack([tone(seconds, 440, sr), tone(seconds, 440, sr, seed=1)], axis=1)
    path = tmp_path / f"a.{fmt}"
    sf.write(path, stereo, sr)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - seconds * SAMPLE_RATE) <= 2
    assert abs(dominant_freq(x) - 440) < 2


@pytest.mark.parametrize(
    "name,container,codec,video",
    [
        ("a.mp3", "mp3", "mp3", False),
        ("a.m4a", "ipod", "aac", False),
        ("a.mp4", "mp4", "aac", True),
    ],
)
def test_ffmpeg_formats_and_video_containers(tmp_path, name, container, codec, video):
    sr, seconds = 22050, 1.0
    path = tmp_path / name
    encode_pyav(path, tone(seconds, 440, sr), sr, container, codec, video)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    # Lossy codecs add priming/padding samples; the length stays within ~0.1 s.
    assert abs(len(x) / SAMPLE_RATE - seconds) < 0.1
    assert abs(dominant_freq(x) - 440) < 3


def test_bytes_file_object_and_arrays_agree(tmp_path):
    x = tone(0.5, 300, 8000)
    path = tmp_path / "a.wav"
    sf.write(path, x, 8000, subtype="FLOAT")
    from_path = load_audio(path)
    np.testing.assert_array_equal(load_audio(path.read_bytes()), from_path)
    np.testing.assert_array_equal(load_audio(io.BytesIO(path.read_bytes())), from_path)
    np.testing.assert_allclose(load_audio(x, sampling_rate=8000), from_path, atol=1e-6)
    np.testing.assert_allclose(load_audio((torch.from_numpy(x), 8000)), from_path, atol=1e-6)
    np.testing.assert_allclose(
        load_audio({"array": x, "sampling_rate": 8000}), from_path, atol=1e-6
    )
    # (channels, samples) and (samples, channels) both downmix.
    both = np.stack([x, x])
    np.testing.assert_allclose(load_audio(both, 8000), load_audio(both.T, 8000), atol=1e-6)


def test_missing_file_error_names_it(tmp_path):
    with pytest.raises(AudioError, match=r"nope\.wav.*does not exist"):
        load_audio(tmp_path / "nope.wav")


def test_not_audio_error_names_it(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio at all")
    with pytest.raises(AudioError, match=r"notes\.wav.*could not be decoded"):
        load_audio(path)


def test_zero_length_audio(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match=r"empty\.wav.*zero-length"):
        load_audio(path)
    with pytest.raises(AudioError, match="zero-length"):
        load_audio(np.zeros(0, np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_samples(bad):
    x = tone(0.2)
    x[10] = bad
    with pytest.raises(AudioError, match="NaN or Inf"):
        load_audio(x)


def test_wrong_types():
    with pytest.raises(AudioError, match="Unsupported audio source type int"):
        load_audio(42)
    with pytest.raises(AudioError, match="non-numeric"):
        load_audio(np.array(["a", "b"]))


def test_token_arithmetic_matches_reference():
    # 30 s: 3000 frames -> 1500 positions -> 750 tokens (25 tokens/s).
    assert encoder_output_lengths(3000) == (1500, 750)
    assert mel_frames(N_SAMPLES) == 3000
    frames = torch.tensor([3000, 1500, 101, 4])
    positions, tokens = encoder_output_lengths(frames)
    assert positions.tolist() == [1500, 750, 51, 2] and tokens.tolist() == [750, 375, 25, 1]


def test_75_seconds_is_three_windows_nothing_dropped():
    x = tone(75)
    windows = split_windows(x)
    assert [len(w) for w in windows] == [N_SAMPLES, N_SAMPLES, 15 * SAMPLE_RATE]
    np.testing.assert_array_equal(np.concatenate(windows), x)
    assert audio_tokens_for_samples(len(x)) == [750, 750, 375]


def test_15_minutes_is_thirty_windows():
    n = 15 * 60 * SAMPLE_RATE
    assert audio_tokens_for_samples(n) == [750] * 30
    assert len(split_windows(np.zeros(n, np.float32))) == 30


def test_windows_keep_their_real_length_and_a_tail_of_two_frames_gives_no_token():
    x = tone(30.005)  # 80 samples after the first window
    windows = split_windows(x)
    assert [len(w) for w in windows] == [N_SAMPLES, 80]
    np.testing.assert_array_equal(windows[1], x[N_SAMPLES:])
    # The reference counts real frames only: ceil(n / 160) frames -> (f-1)//2+1 -> (p-2)//2+1
    # tokens.
    assert audio_tokens_for_samples(len(x)) == [750, 0]
    assert [window_tokens(n) for n in (1, 160, 320, 321, 480, 481, 800, 1600)] == [
        0,
        0,
        0,
        1,
        1,
        1,
        1,
        2,
    ]
