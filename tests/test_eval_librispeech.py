"""LibriSpeech layout listing and the long-form builder, on a generated 2x2x3 fixture."""

import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from aero.audio import SAMPLE_RATE
from aero.evaluation.cli import app
from aero.evaluation.datasets import librispeech_items, manifest_items
from aero.evaluation.longform import build_librispeech_longform, build_manifest_longform

# Speaker 19 must come before 103: numeric order, not string order.
LAYOUT = {("19", "198"): 3, ("19", "227"): 3, ("103", "1240"): 3, ("103", "1241"): 3}
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]


def make_librispeech(root):
    """Writes the fixture; returns {utterance id: (TEXT, samples)} with distinct known lengths."""
    truth = {}
    rng = np.random.default_rng(0)
    for g, ((speaker, chapter), n) in enumerate(LAYOUT.items()):
        folder = root / "test-tiny" / speaker / chapter
        folder.mkdir(parents=True)
        lines = []
        for u in range(n):
            utt = f"{speaker}-{chapter}-{u:04d}"
            n_samples = SAMPLE_RATE // 4 + 800 * (3 * g + u)  # 0.25 s + 50 ms steps: all distinct
            t = np.arange(n_samples) / SAMPLE_RATE
            audio = 0.3 * np.sin(2 * np.pi * (220 + 50 * u) * t) + 0.01 * rng.standard_normal(
                n_samples
            )
            sf.write(folder / f"{utt}.flac", audio, SAMPLE_RATE, subtype="PCM_16")
            text = f"{WORDS[g]} {WORDS[u]} SAID {speaker}"
            truth[utt] = (text, n_samples)
            lines.append(f"{utt} {text}")
        # Transcript lines written out of order: the listing must sort them.
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(reversed(lines)) + "\n")
    return truth


@pytest.fixture
def libri(tmp_path):
    root = tmp_path / "LibriSpeech"
    return root, make_librispeech(root)


def test_librispeech_listing_is_sorted_numerically(libri):
    root, truth = libri
    items = librispeech_items(root)
    assert [i.id for i in items] == [
        "19-198-0000",
        "19-198-0001",
        "19-198-0002",
        "19-227-0000",
        "19-227-0001",
        "19-227-0002",
        "103-1240-0000",
        "103-1240-0001",
        "103-1240-0002",
        "103-1241-0000",
        "103-1241-0001",
        "103-1241-0002",
    ]
    assert items[4].text == truth["19-227-0001"][0] == "bravo bravo SAID 19"
    assert items[4].group == "19-227"
    assert items[4].audio.endswith("19/227/19-227-0001.flac")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        librispeech_items(root.parent / "missing")
    (root.parent / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No LibriSpeech transcripts"):
        librispeech_items(root.parent / "empty")


@pytest.mark.parametrize("gap", [0.0, 0.1])
def test_longform_groups_order_durations_and_text(libri, tmp_path, gap):
    root, truth = libri
    manifest = build_librispeech_longform(root, tmp_path / "long", gap_seconds=gap)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["id"] for r in records] == ["19-198", "19-227", "103-1240", "103-1241"]
    gap_samples = round(gap * SAMPLE_RATE)
    for r in records:
        utts = [f"{r['id']}-{u:04d}" for u in range(3)]
        assert r["utterances"] == utts
        assert r["text"] == " ".join(truth[u][0] for u in utts)
        expected = sum(truth[u][1] for u in utts) + 2 * gap_samples
        assert r["duration"] == pytest.approx(expected / SAMPLE_RATE, abs=1e-9)
        audio, sr = sf.read(tmp_path / "long" / r["audio"], dtype="float32")
        assert sr == SAMPLE_RATE and audio.ndim == 1 and len(audio) == expected
        # Parts appear in utterance order, separated by exact silence.
        pos = 0
        for k, u in enumerate(utts):
            part, _ = sf.read(
                root / "test-tiny" / r["id"].split("-")[0] / r["id"].split("-")[1] / f"{u}.flac",
                dtype="float32",
            )
            np.testing.assert_array_equal(audio[pos : pos + len(part)], part)
            pos += len(part)
            if k < 2:
                assert not audio[pos : pos + gap_samples].any()
                pos += gap_samples
    # The built manifest is a valid evaluation set.
    items = manifest_items(manifest)
    assert items[0].id == "19-198" and items[0].duration == pytest.approx(records[0]["duration"])


def test_manifest_longform_with_group_key(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    lines = []
    for k, (talk, n) in enumerate([("t1", 1600), ("t2", 3200), ("t1", 4800)]):
        sf.write(clips / f"c{k}.wav", np.full(n, 0.1, np.float32), SAMPLE_RATE, subtype="PCM_16")
        lines.append(json.dumps({"audio": f"clips/c{k}.wav", "text": f" part {k} ", "talk": talk}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    manifest = build_manifest_longform(
        tmp_path / "m.jsonl", "talk", tmp_path / "out", gap_seconds=0.5
    )
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [(r["id"], r["text"]) for r in records] == [("t1", "part 0 part 2"), ("t2", "part 1")]
    assert records[0]["duration"] == pytest.approx((1600 + 4800) / SAMPLE_RATE + 0.5)
    assert records[1]["duration"] == pytest.approx(3200 / SAMPLE_RATE)


def test_cli_build_longform(libri, tmp_path):
    root, _ = libri
    result = CliRunner().invoke(
        app, ["build-longform", str(root), str(tmp_path / "cli"), "--gap", "0.2"]
    )
    assert result.exit_code == 0, result.output
    assert "Wrote 4 recordings" in result.output
    assert len((tmp_path / "cli" / "manifest.jsonl").read_text().splitlines()) == 4
    assert len(list((tmp_path / "cli" / "audio").glob("*.flac"))) == 4

    bad = CliRunner().invoke(
        app, ["build-longform", str(tmp_path / "nope.jsonl"), str(tmp_path / "x")]
    )
    assert bad.exit_code == 1 and "--group-key" in bad.output


class SilentTranscriber:
    """A Transcriber that hears nothing: every reference word becomes a deletion."""

    name = "silent"

    def transcribe(self, audios, prompt=None):
        return ["" for _ in audios]


@pytest.mark.parametrize("task, items", [("librispeech", 12), ("librispeech-long", 4)])
def test_cli_librispeech_tasks(libri, tmp_path, monkeypatch, task, items):
    from aero.evaluation import cli

    root, _ = libri
    monkeypatch.setattr(cli, "resolve_model", lambda spec, max_new_tokens=None: SilentTranscriber())
    out = tmp_path / task
    result = CliRunner().invoke(
        app, ["--model", "silent", "--task", task, "--data", str(root), "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert (
        results["counts"]["items"] == items and results["counts"]["deletions"] == 48
    )  # 12 utterances x 4 words
    assert results["wer_percent"] == 100.0
    assert (out / "longform" / "manifest.jsonl").is_file() == (task == "librispeech-long")
