"""Token-length estimates for batching, from real audio durations, cached per manifest.

The reference estimated every audio as 750 tokens (a full 30 s window) whatever its length,
so batches of short clips were sized as if they were long. Here the estimate is exact up to
the duration read from the file header: the audio tokens of each 30 s window (the same
arithmetic as the processor) plus the tokens of the rendered chat text.

The cache is a JSON file per manifest under `$AERO_CACHE/lengths` (default
`~/.cache/aero/lengths`), keyed by the manifest's path, size and mtime, so a big manifest
is measured once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from aero.audio import SAMPLE_RATE, audio_tokens_for_samples
from aero.data.manifest import DatasetSpec, ManifestError, Sample, audio_paths, read_dataset
from aero.processing import repeat_audio_parts


def cache_dir() -> Path:
    return Path(os.environ.get("AERO_CACHE", Path.home() / ".cache" / "aero"))


def audio_samples(path: Path) -> int:
    """Number of 16 kHz samples the decoded file will have, from its header where possible."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
        return round(info.frames * SAMPLE_RATE / info.samplerate)
    except Exception:
        pass
    try:  # not a libsndfile format: FFmpeg's container header (PyAV missing: an error too)
        import av

        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = container.duration / 1_000_000
            return round(seconds * SAMPLE_RATE)
    except Exception as err:
        raise ManifestError(
            f"Cannot read the duration of {path} ({type(err).__name__}: {err})."
        ) from None


def estimate_length(sample: Sample, processor) -> tuple[int, float]:
    """(estimated token length, audio seconds) of one sample."""
    window_tokens: list[int] = []
    per_audio: list[int] = []
    seconds = 0.0
    for path in audio_paths(sample):
        if not path.exists():
            raise ManifestError(f"{sample.source}: audio file {path} does not exist.")
        n = audio_samples(path)
        seconds += n / SAMPLE_RATE
        tokens = audio_tokens_for_samples(n, processor.audio_stack)
        window_tokens += tokens
        per_audio.append(len(tokens))
    # Render with one placeholder per window; each placeholder then stands for its tokens.
    text = processor.apply_chat_template(
        repeat_audio_parts(sample.messages, per_audio), add_generation_prompt=False
    )
    n_ids = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
    return n_ids - len(window_tokens) + sum(window_tokens), seconds


def manifest_key(path: str | os.PathLike, processor) -> str:
    p = Path(path).resolve()
    stat = p.stat()
    tok = processor.tokenizer
    ident = (
        f"{p}|{stat.st_size}|{stat.st_mtime_ns}|{len(tok)}|"
        f"{processor.system_prompt}|{processor.audio_stack}"
    )
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def cached_lengths(path: str | os.PathLike, samples: list[Sample], processor, strict: bool = False):
    """Lengths and durations of `samples` (None where unreadable), cached for this manifest."""
    cache = cache_dir() / "lengths" / f"{manifest_key(path, processor)}.json"
    if cache.is_file():
        data = json.loads(cache.read_text())
        if len(data["lengths"]) == len(samples):
            return data["lengths"], data["seconds"], data["errors"]
    lengths, seconds, errors = [], [], {}
    for i, sample in enumerate(samples):
        try:
            n, s = estimate_length(sample, processor)
        except (ManifestError, OSError) as err:
            if strict:
                raise
            n, s = None, None
            errors[str(i)] = str(err)
        lengths.append(n)
        seconds.append(s)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"lengths": lengths, "seconds": seconds, "errors": errors}))
    os.replace(tmp, cache)
    return lengths, seconds, errors


def measured_dataset(spec: DatasetSpec, processor, strict: bool = False):
    """A dataset's samples, their lengths (None where unreadable) and {source: error} of the
    unreadable ones, restricted to `spec.tasks`; the lengths are cached for the whole manifest."""
    samples = read_dataset(spec)
    lengths, _, errors = cached_lengths(spec.path, samples, processor, strict=strict)
    errors = {samples[int(i)].source: msg for i, msg in errors.items()}
    if spec.tasks is None:
        return samples, lengths, errors
    keep = [i for i, s in enumerate(samples) if s.extra.get("task") in spec.tasks]
    if not keep:
        found = sorted({str(s.extra.get("task")) for s in samples})
        raise ManifestError(
            f"{spec.path}: no row has a task in {spec.tasks} (its tasks: {', '.join(found)})."
        )
    samples, lengths = [samples[i] for i in keep], [lengths[i] for i in keep]
    sources = {s.source for s in samples}
    return samples, lengths, {k: v for k, v in errors.items() if k in sources}
