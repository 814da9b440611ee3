"""Free-answer evaluation from chat manifests: items, judges, per-category accuracy, failures."""

import json

import numpy as np
import pytest
import soundfile as sf

from aero.audio import SAMPLE_RATE
from aero.data.manifest import ManifestError
from aero.evaluation.answers import (
    as_asr_items,
    chat_manifest_items,
    first_sentence,
    run_answer_eval,
    token_f1,
)

# (samples, prompt, reference, category, what the fake model replies)
ROWS = [
    (8000, "How fast is the speech?", "Fast.", "rate", "fast"),
    (9600, "Is the speaker male or female?", "Female.", "gender", "Male."),
    (11200, "How many speakers are there?", "Two.", "speakers", "2"),
    (
        12800,
        "What is a volcano?",
        "A volcano is a mountain. It erupts.",
        "instruct",
        "A volcano is a mountain. Lava!",
    ),
]


class Replier:
    name = "fake"

    def transcribe(self, audios, prompt=None):
        raise AssertionError("answer tasks must not call transcribe")

    def answer(self, audios, prompts):
        by_len = {n: reply for n, _, _, _, reply in ROWS}
        return [by_len[len(a)] for a in audios]


@pytest.fixture
def manifest(tmp_path):
    lines = []
    for k, (n, prompt, ref, kind, _) in enumerate(ROWS):
        sf.write(
            tmp_path / f"a{k}.wav", np.full(n, 0.05, np.float32), SAMPLE_RATE, subtype="PCM_16"
        )
        lines.append(
            {
                "id": f"q{k}",
                "task": "understand",
                "meta": {"question_kind": kind},
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "audio_url", "audio_url": {"url": f"a{k}.wav"}},
                            {"type": "text", "text": prompt},
                        ],
                    },
                    {"role": "assistant", "content": [{"type": "text", "text": ref}]},
                ],
            }
        )
    (tmp_path / "broken.wav").write_bytes(b"not audio")
    broken = json.loads(json.dumps(lines[0]))
    broken["id"] = "broken"
    broken["messages"][0]["content"][0]["audio_url"]["url"] = "broken.wav"
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines + [broken]) + "\n")
    return path


def test_items_from_a_chat_manifest(manifest, tmp_path):
    items = chat_manifest_items(manifest)
    assert [i.id for i in items] == ["q0", "q1", "q2", "q3", "broken"]
    assert items[1].prompt == "Is the speaker male or female?" and items[1].reference == "Female."
    assert items[1].category == "gender" and items[1].audio == str(tmp_path / "a1.wav")
    asr = as_asr_items(items)
    assert asr[0].text == "Fast." and asr[0].audio == items[0].audio


def test_escaping_audio_path_is_refused(manifest):
    rows = manifest.read_text().splitlines()
    row = json.loads(rows[0])
    row["messages"][0]["content"][0]["audio_url"]["url"] = "../../etc/passwd"
    manifest.write_text(json.dumps(row) + "\n")
    with pytest.raises(ManifestError, match="escapes the data root"):
        chat_manifest_items(manifest)


def test_exact_judge_scores_per_category_and_reports_failures(manifest, tmp_path):
    r = run_answer_eval(
        Replier(),
        chat_manifest_items(manifest),
        judge="exact",
        batch_size=2,
        output_dir=tmp_path / "out",
    )
    # fast == Fast. ; Male. != Female. ; 2 == Two. (normalizer) ; the long answer differs ;
    # broken fails
    assert r["counts"] == {"items": 5, "failed": 1, "answered": 4, "exact": 2}
    assert r["accuracy_percent"] == 50.0
    assert r["per_category"]["rate"] == {"n": 1, "correct": 1, "accuracy_percent": 100.0}
    assert r["per_category"]["gender"]["correct"] == 0
    samples = [json.loads(l) for l in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert (
        samples[-1]["id"] == "broken" and samples[-1]["response"] is None and samples[-1]["error"]
    )
    assert json.loads((tmp_path / "out" / "results.json").read_text())["judge"] == "exact"


def test_agreement_judge(manifest, tmp_path):
    items = chat_manifest_items(manifest)[3:4]
    r = run_answer_eval(Replier(), items, judge="agreement", output_dir=tmp_path / "out")
    assert r["exact_percent"] == 0.0 and r["first_sentence_percent"] == 100.0
    assert r["token_f1_percent"] == pytest.approx(
        100 * token_f1(items[0].reference, "A volcano is a mountain. Lava!"), abs=0.01
    )
    with pytest.raises(ValueError, match="judge"):
        run_answer_eval(Replier(), items, judge="vibes", output_dir=tmp_path / "x")


def test_token_f1_and_first_sentence():
    assert token_f1("the cat sat", "the cat sat") == 1.0
    assert token_f1("the cat sat", "a dog ran") == 0.0
    assert token_f1("the cat sat down", "the cat") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert token_f1("", "") == 1.0 and token_f1("cat", "") == 0.0
    assert first_sentence("Hi there. Bye.") == "Hi there." and first_sentence("No end") == "No end"
