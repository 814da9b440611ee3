"""JSONL manifests (errors name the line) and local Hugging Face `datasets` directories."""

import json

import numpy as np
import pytest
import soundfile as sf

from aero.audio import SAMPLE_RATE
from aero.evaluation.datasets import ManifestError, hf_items, manifest_items


def test_manifest_relative_and_absolute_paths(tmp_path):
    lines = [
        {"audio": "a/1.wav", "text": "one", "duration": 1.5, "id": "u1"},
        {"audio": "/data/2.wav", "text": "two"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    items = manifest_items(tmp_path / "m.jsonl")
    assert [(i.id, i.audio, i.text, i.duration) for i in items] == [
        ("u1", str(tmp_path / "a" / "1.wav"), "one", 1.5),
        ("line2", "/data/2.wav", "two", None),
    ]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"audio": "x.wav"}', "field 'text'"),
        ('{"audio": "x.wav", "text": "t", "duration": "long"}', "field 'duration'"),
    ],
)
def test_manifest_errors_name_the_line(tmp_path, bad, message):
    good = json.dumps({"audio": "x.wav", "text": "fine"})
    (tmp_path / "m.jsonl").write_text(f"{good}\n{good}\n{bad}\n")
    with pytest.raises(ManifestError, match=rf"m.jsonl:3: {message}"):
        manifest_items(tmp_path / "m.jsonl")


def test_manifest_group_key_and_missing_file(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "x.wav", "text": "t"}) + "\n")
    with pytest.raises(ManifestError, match="m.jsonl:1: grouping field 'talk'"):
        manifest_items(tmp_path / "m.jsonl", group_key="talk")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        manifest_items(tmp_path / "nope.jsonl")


def test_hf_directory_with_configurable_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros(SAMPLE_RATE // 2, np.float32), SAMPLE_RATE)
    ds = datasets.Dataset.from_dict(
        {"speech": [str(clip)] * 2, "sentence": ["hello", "world"], "key": ["k1", "k2"]}
    )
    ds = ds.cast_column("speech", datasets.Audio(decode=False))
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "hf"))

    items = list(
        hf_items(tmp_path / "hf", audio_column="speech", text_column="sentence", id_column="key")
    )
    assert [(i.id, i.text) for i in items] == [("k1", "hello"), ("k2", "world")]
    from aero.audio import load_audio

    assert len(load_audio(items[0].audio)) == SAMPLE_RATE // 2  # {"bytes"/"path"} dict decodes
    with pytest.raises(ValueError, match="no column 'audio'"):
        hf_items(tmp_path / "hf")
    with pytest.raises(ValueError, match="no split 'train'"):
        hf_items(tmp_path / "hf", split="train", audio_column="speech", text_column="sentence")


def test_manifest_reads_training_format_lines(tmp_path):
    user = {
        "role": "user",
        "content": [
            {"type": "audio_url", "audio_url": {"url": "a.wav"}},
            {"type": "text", "text": "Please transcribe the audio"},
        ],
    }
    good = {
        "messages": [
            user,
            {"role": "assistant", "content": [{"type": "text", "text": "hello world"}]},
        ]
    }
    no_reply = {"messages": [user]}
    (tmp_path / "m.jsonl").write_text(json.dumps(good) + "\n")
    (item,) = manifest_items(tmp_path / "m.jsonl")
    assert (item.audio, item.text) == (str(tmp_path / "a.wav"), "hello world")
    (tmp_path / "bad.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(no_reply) + "\n")
    with pytest.raises(
        ManifestError, match=r"bad.jsonl:2: .*1 audio parts and 0 assistant text parts"
    ):
        manifest_items(tmp_path / "bad.jsonl")
