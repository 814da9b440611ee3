"""Runner end to end with an in-test transcriber: both files, counts, failures, warm-up, CLI."""

import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from aero.audio import SAMPLE_RATE
from aero.evaluation import cli
from aero.evaluation.choice import ChoiceItem
from aero.evaluation.datasets import manifest_items
from aero.evaluation.report import write_report
from aero.evaluation.runner import run_asr_eval, run_choice_eval

# (clip samples, reference, what the fake model says): distinct lengths identify the clip.
CLIPS = [
    (8000, "the cat sat on the mat", "the cat sat on the mat"),  # 0 errors / 6 words
    (9600, "Mr. Smith went home.", "mister smith went home"),  # 0 after normalization / 4
    (11200, "red green blue black", "red grin blue black white"),  # 1 S + 1 I / 4
    (12800, "it was raining", "it raining"),  # 1 D / 3
]
POISON = 14400  # a clip the fake model cannot handle


class FakeTranscriber:
    """Implements the Transcriber protocol by looking the clip up by its length."""

    name = "fake-asr"
    parameters = 1_000_000

    def __init__(self):
        self.calls = []

    def transcribe(self, audios, prompt=None):
        self.calls.append((len(audios), prompt))
        assert all(a.dtype == np.float32 and a.ndim == 1 for a in audios)
        if any(len(a) == POISON for a in audios):
            raise RuntimeError("cannot decode this one")
        by_len = {n: said for n, _, said in CLIPS}
        return [by_len[len(a)] for a in audios]

    def answer(self, audios, prompts):
        self.calls.append((len(audios), prompts))
        return ["(B)" if "pitch" in p else "no idea" for p in prompts]


@pytest.fixture
def manifest(tmp_path):
    lines = []
    for k, (n, ref, _) in enumerate(CLIPS):
        sf.write(
            tmp_path / f"c{k}.wav", np.full(n, 0.05, np.float32), SAMPLE_RATE, subtype="PCM_16"
        )
        lines.append({"id": f"c{k}", "audio": f"c{k}.wav", "text": ref})
    sf.write(tmp_path / "poison.wav", np.zeros(POISON, np.float32), SAMPLE_RATE)
    (tmp_path / "broken.wav").write_bytes(b"this is not audio")
    lines.insert(2, {"id": "broken", "audio": "broken.wav", "text": "lost words here"})
    lines.append({"id": "poison", "audio": "poison.wav", "text": "never heard"})
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_run_asr_eval_writes_results_and_samples(manifest, tmp_path):
    model = FakeTranscriber()
    out = tmp_path / "run"
    results = run_asr_eval(
        model, manifest_items(manifest), batch_size=2, output_dir=out, task_name="tiny", prompt="P:"
    )

    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert (
        results["model"] == "fake-asr"
        and results["task"] == "tiny"
        and results["parameters"] == 1_000_000
    )
    counts = results["counts"]
    assert counts["items"] == 6 and counts["failed"] == 2 and counts["scored"] == 4
    assert (counts["substitutions"], counts["deletions"], counts["insertions"]) == (1, 1, 1)
    assert counts["reference_words"] == 6 + 4 + 4 + 3
    assert results["wer"] == pytest.approx(3 / 17)
    assert results["wer_percent"] == 17.65
    low, high = results["ci95"]
    assert low <= results["wer"] <= high
    assert results["protocol"].startswith("whisper-normalizer")
    speed = results["speed"]
    assert speed["audio_seconds"] == pytest.approx(sum(n for n, _, _ in CLIPS) / SAMPLE_RATE)
    assert speed["rtfx"] > 0
    assert {"python", "packages", "platform", "cpu_count", "timestamp"} <= set(
        results["environment"]
    )

    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["id"] for s in samples] == ["c0", "c1", "broken", "c2", "c3", "poison"]
    by_id = {s["id"]: s for s in samples}
    assert (
        by_id["c1"]["reference_normalized"]
        == by_id["c1"]["hypothesis_normalized"]
        == "mister smith went home"
    )
    assert (by_id["c2"]["substitutions"], by_id["c2"]["insertions"], by_id["c2"]["errors"]) == (
        1,
        1,
        2,
    )
    assert by_id["c3"]["deletions"] == 1
    assert by_id["broken"]["hypothesis"] is None and "broken.wav" in by_id["broken"]["error"]
    assert "cannot decode this one" in by_id["poison"]["error"]

    # Warm-up: one untimed single-item call first; the prompt is passed through.
    assert model.calls[0] == (1, "P:")

    # The run directory feeds the report directly.
    files = write_report([out], tmp_path / "report")
    assert "| fake-asr | 17.65 | 17.65 |" in files.markdown.read_text()
    assert [c.name for c in files.charts] == ["wer_by_task.png", "parameters_vs_wer.png"]


def test_failing_batch_is_retried_item_by_item(manifest, tmp_path):
    items = manifest_items(manifest)
    results = run_asr_eval(
        FakeTranscriber(), [items[-2], items[-1]], batch_size=2, output_dir=tmp_path / "r"
    )
    assert (
        results["counts"]["failed"] == 1 and results["counts"]["scored"] == 1
    )  # c3 survives poison's batch


def test_limit_and_all_failed(manifest, tmp_path):
    results = run_asr_eval(
        FakeTranscriber(), manifest_items(manifest), limit=2, output_dir=tmp_path / "l"
    )
    assert results["counts"]["items"] == 2 and results["wer"] == 0.0
    items = [i for i in manifest_items(manifest) if i.id in ("broken", "poison")]
    results = run_asr_eval(FakeTranscriber(), items, output_dir=tmp_path / "f")
    assert results["counts"]["failed"] == 2 and results["wer"] is None and results["reason"]
    with pytest.raises(ValueError, match="empty"):
        run_asr_eval(FakeTranscriber(), [], output_dir=tmp_path / "e")


def test_run_choice_eval(manifest, tmp_path):
    wav = str(manifest.parent / "c0.wav")
    items = [
        ChoiceItem("q1", wav, "Which pitch?", ("low", "high"), 1, "music"),
        ChoiceItem("q2", wav, "Which pitch?", ("low", "high"), 0, "music"),
        ChoiceItem("q3", wav, "Who speaks?", ("man", "woman", "child"), 2, "speech"),
        ChoiceItem("q4", str(manifest.parent / "broken.wav"), "Who?", ("a", "b"), 0, "speech"),
    ]
    results = run_choice_eval(
        FakeTranscriber(), items, batch_size=3, output_dir=tmp_path / "c", task_name="mmau-mini"
    )
    assert results["counts"] == {
        "items": 4,
        "failed": 1,
        "answered": 3,
        "correct": 1,
        "unparsed": 1,
    }
    assert results["accuracy_percent"] == 33.33
    assert results["per_category"]["music"] == {"n": 2, "correct": 1, "accuracy_percent": 50.0}
    assert results["per_category"]["speech"]["correct"] == 0
    samples = [
        json.loads(line) for line in (tmp_path / "c" / "samples.jsonl").read_text().splitlines()
    ]
    assert samples[0]["predicted_letter"] == "B" and samples[0]["correct"] is True
    assert samples[2]["predicted_letter"] is None and samples[3]["error"]


def test_cli_evaluate(manifest, tmp_path, monkeypatch):
    # The CLI's model lookup is replaced by the in-test model; the rest is the real path.
    monkeypatch.setattr(cli, "resolve_model", lambda spec, max_new_tokens=None: FakeTranscriber())
    out = tmp_path / "cli-run"
    args = [
        "--model",
        "fake",
        "--task",
        "manifest",
        "--data",
        str(manifest),
        "--output",
        str(out),
        "--name",
        "tiny",
    ]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert "17.65" in result.output and "2 of 6 items failed" in result.output
    assert json.loads((out / "results.json").read_text())["task"] == "tiny"

    missing = CliRunner().invoke(
        cli.app, ["--model", "fake", "--task", "manifest", "--data", str(tmp_path / "no.jsonl")]
    )
    assert missing.exit_code == 1 and "does not exist" in missing.output
    no_args = CliRunner().invoke(cli.app, [])
    assert no_args.exit_code == 2 and "--model" in no_args.output
