"""scripts/device_session.py: what it carries to a lent GPU machine arrives whole and readable."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from aero.audio import load_audio
from conftest import load_script


def device_script():
    return load_script("device_session")


def test_audio_travels_as_opus_and_the_manifests_follow(tmp_path, monkeypatch):
    """Each clip travels as Opus that libsndfile (what trains there) reads back at its length; a
    clip it cannot read back as Opus (some under 1 s, in one Ogg page) travels as it was."""
    script = device_script()
    monkeypatch.chdir(tmp_path)
    data = Path("data") / "s1"
    (data / "audio").mkdir(parents=True)
    rows, clips = [], {}
    for name, seconds in (("a", 3.0), ("b", 0.87), ("c", 0.6)):
        t = np.arange(int(16000 * seconds)) / 16000
        clips[name] = (
            0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
        ).astype("float32")
        sf.write(data / "audio" / f"{name}.flac", clips[name], 16000)
        audio = {"type": "audio_url", "audio_url": {"url": f"audio/{name}.flac"}}
        rows.append(
            {
                "id": name,
                "task": "transcribe",
                "messages": [
                    {"role": "user", "content": [audio]},
                    {"role": "assistant", "content": [{"type": "text", "text": "a tone"}]},
                ],
            }
        )
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "train.synth.json").write_text(json.dumps({"recipe": "r", "seed": 1}))
    (data / "train.failed.jsonl").write_text("")
    stage = tmp_path / "stage"
    assert script.transcode(data, stage, 12, 1) == ["train"]
    moved = [json.loads(line) for line in (stage / data / "train.jsonl").read_text().splitlines()]
    urls = [script.audio_parts(row)[0]["url"] for row in moved]
    assert urls[0] == "audio/a.ogg" and all(u.endswith((".ogg", ".flac")) for u in urls)
    assert json.loads((stage / data / "train.synth.json").read_text()) == {
        "recipe": "r",
        "seed": 1,
        "carried_as": "ogg-opus-12kbps",
    }
    for name, url in zip(clips, urls):
        assert sf.info(stage / data / url).frames == len(clips[name])  # the same token counts
        assert np.corrcoef(load_audio(stage / data / url), clips[name])[0, 1] > 0.95
    assert (stage / data / urls[0]).stat().st_size * 8 / 3 < 20_000  # < 20 kb/s


def test_pieces_rejoin_to_the_bundle_and_the_first_holds_the_wheels(tmp_path, monkeypatch):
    script = device_script()
    stage = tmp_path / "stage"
    (stage / "wheels").mkdir(parents=True)
    (stage / "wheels" / "a.whl").write_bytes(b"w" * 3000)
    (stage / "big.bin").write_bytes(np.random.default_rng(0).bytes(20000))
    script.cut(stage, tmp_path / "carry", piece_mib=8000 / 2**20)
    pieces = sorted((tmp_path / "carry").iterdir(), key=lambda p: int(p.name[1:]))
    plan = json.loads((pieces[0] / "pieces.json").read_text())
    assert [p.name for p in pieces] == [f"p{k}" for k in range(-(-plan["bytes"] // 8000))]
    assert all((p / name).stat().st_size <= 8000 for p, name in zip(pieces, plan["chunks"]))
    joined = b"".join((p / name).read_bytes() for p, name in zip(pieces, plan["chunks"]))
    assert len(joined) == plan["bytes"] and hashlib.sha256(joined).hexdigest() == plan["sha256"]

    monkeypatch.setattr(script, "STORE", pieces[0])  # the first piece alone
    wheels = script.first_chunk_wheels(tmp_path / "first")
    assert [w.name for w in wheels.iterdir()] == ["a.whl"]
    assert (wheels / "a.whl").read_bytes() == b"w" * 3000

    with pytest.raises(SystemExit, match="raise --piece-mib"):
        script.cut(stage, tmp_path / "small", piece_mib=1000 / 2**20)
