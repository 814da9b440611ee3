"""Manifests in every supported form, data-root safety, cached length estimates."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aero.audio import SAMPLE_RATE, audio_tokens_for_samples
from aero.data.lengths import cached_lengths, estimate_length, measured_dataset
from aero.data.manifest import (
    DatasetSpec,
    ManifestError,
    audio_paths,
    read_dataset,
    resolve_audio_path,
)
from conftest import make_tiny_processor, write_manifest


def test_jsonl_json_and_parquet_read_the_same(tmp_path):
    manifest = write_manifest(tmp_path, [1.0, 2.0])
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    (tmp_path / "m.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    # Parquet and `datasets` often keep nested messages as JSON text.
    pq.write_table(
        pa.Table.from_pylist([{"messages": json.dumps(r["messages"])} for r in rows]),
        tmp_path / "t.parquet",
    )
    expected = [s.messages for s in read_dataset(DatasetSpec(str(manifest)))]
    for name in ("m.json", "m.parquet", "t.parquet"):
        got = read_dataset(DatasetSpec(str(tmp_path / name)))
        assert [s.messages for s in got] == expected, name
        assert audio_paths(got[1])[0] == (tmp_path / "audio" / "clip1.wav").resolve()


def test_manifest_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": []}\n')
    with pytest.raises(ManifestError, match=r"bad\.jsonl:1 has no 'messages'"):
        read_dataset(DatasetSpec(str(path)))
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{oops\n')
    with pytest.raises(ManifestError, match=r"bad\.jsonl:1 has no assistant message"):
        read_dataset(DatasetSpec(str(path)))
    with pytest.raises(ManifestError, match="does not exist"):
        read_dataset(DatasetSpec(str(tmp_path / "missing.jsonl")))


def test_paths_escaping_the_root_are_refused(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "secret.wav").write_bytes(b"x")
    (tmp_path / "root" / "link.wav").symlink_to(tmp_path / "secret.wav")
    for bad in ("../secret.wav", str(tmp_path / "secret.wav"), "link.wav"):
        with pytest.raises(ManifestError, match="escapes the data root"):
            resolve_audio_path(bad, tmp_path / "root")
    assert (
        resolve_audio_path("a/b.wav", tmp_path / "root")
        == (tmp_path / "root" / "a" / "b.wav").resolve()
    )


def test_length_estimate_is_exact_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("AERO_CACHE", str(tmp_path / "cache"))
    manifest = write_manifest(tmp_path / "d", [1.3, 37.0])
    processor = make_tiny_processor()
    samples = read_dataset(DatasetSpec(str(manifest)))
    for sample in samples:
        n, seconds = estimate_length(sample, processor)
        encoded = processor.encode_conversation(
            __import__("aero.data.manifest", fromlist=["x"]).with_resolved_audio(sample)
        )
        assert n == len(encoded["input_ids"])  # the estimate is the real length
    lengths, seconds, errors = cached_lengths(manifest, samples, processor)
    assert seconds == pytest.approx([1.3, 37.0], abs=1e-3) and not errors
    assert sum(audio_tokens_for_samples(int(37.0 * SAMPLE_RATE))) == 925
    # Measured once: with the audio gone, the cache still answers.
    for f in (tmp_path / "d" / "audio").iterdir():
        f.unlink()
    assert cached_lengths(manifest, samples, processor)[0] == lengths


def test_a_dataset_can_keep_only_some_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("AERO_CACHE", str(tmp_path / "cache"))
    manifest = write_manifest(tmp_path / "d", [1.0, 2.0, 3.0])
    rows = [json.loads(r) for r in manifest.read_text().splitlines()]
    for row, task in zip(rows, ["transcribe", "instruct", "transcribe"]):
        row["task"] = task
    rows[2]["messages"][0]["content"][0]["audio_url"]["url"] = "audio/missing.wav"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    processor = make_tiny_processor()
    everything = measured_dataset(DatasetSpec(str(manifest)), processor)
    samples, lengths, errors = measured_dataset(
        DatasetSpec(str(manifest), tasks=["transcribe"]), processor
    )
    assert [s.extra["task"] for s in samples] == ["transcribe", "transcribe"]
    assert lengths == [everything[1][0], None]  # the missing audio is reported, not dropped
    assert list(errors) == [samples[1].source] and "missing.wav" in errors[samples[1].source]
    with pytest.raises(ManifestError, match="no row has a task in \\['understand'\\]"):
        measured_dataset(DatasetSpec(str(manifest), tasks=["understand"]), processor)
