"""The CTC alignment stage: exact column-gathered CTC, sample selection, files, resume, hand-off."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aero.data.manifest import DatasetSpec, read_dataset
from aero.modeling import AeroForConditionalGeneration
from aero.train.align import CTCHead, _Stage, greedy_ctc, transcription_pair
from aero.train.config import ConfigError, TrainConfig, apply_overrides
from aero.train.run import train
from conftest import make_tiny_model, make_tiny_processor, write_manifest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    path = write_manifest(root, [1.0, 2.5, 0.8, 3.1, 1.7, 0.6, 2.2, 1.3])
    rows = [json.loads(r) for r in path.read_text().splitlines()]
    rows[0]["task"] = "instruct"  # not a transcription: left out of the stage
    (root / "audio" / "broken.wav").write_text("not audio")
    broken = json.loads(json.dumps(rows[1]))
    broken["messages"][0]["content"][0]["audio_url"]["url"] = "audio/broken.wav"
    path.write_text("\n".join(json.dumps(r) for r in rows + [broken]) + "\n")
    return path


def config(base, manifest, out, **kw):
    values = dict(
        model=str(base),
        output_dir=str(out),
        data=[{"path": str(manifest)}],
        objective="ctc",
        token_budget=120,
        max_steps=6,
        lr=2e-2,
        save_every=3,
        progress=False,
        seed=1,
        bf16=False,
    )
    values.update(kw)
    return apply_overrides(TrainConfig(), values)


def test_gathered_columns_ctc_equals_full_vocabulary_ctc():
    torch.manual_seed(0)
    model, processor = make_tiny_model(), make_tiny_processor()
    stage = _Stage(model, processor, TrainConfig())
    V = stage.head.blank_index + 1
    projected = [
        torch.randn(9, model.config.text_config.hidden_size, requires_grad=True),
        torch.randn(6, model.config.text_config.hidden_size, requires_grad=True),
    ]
    targets = [[5, 7, 7, 2], [11, 3]]
    _, ctc, _, _, _ = stage.loss(projected, targets, 0.0)
    full = torch.nn.utils.rnn.pad_sequence([stage.head(p).log_softmax(-1) for p in projected])
    expected = (
        torch.nn.functional.ctc_loss(
            full,
            torch.tensor(sum(targets, [])),
            torch.tensor([9, 6]),
            torch.tensor([4, 2]),
            blank=V - 1,
            reduction="sum",
        )
        / 6
    )
    torch.testing.assert_close(ctc, expected)
    g1 = torch.autograd.grad(ctc, projected[0], retain_graph=True)[0]
    g2 = torch.autograd.grad(expected, projected[0])[0]
    torch.testing.assert_close(g1, g2)


def test_a_batch_of_recordings_projects_as_each_recording_alone():
    torch.manual_seed(0)
    model = make_tiny_model(projector_type="ctc", projector_stack=2, connector_layers=2).eval()
    processor = make_tiny_processor()
    stage = _Stage(model, processor, TrainConfig(bf16=False))
    seconds = [[1.3], [0.6, 2.2], [3.0]]  # the second recording has two windows
    windows = [torch.randn(int(s * 16000)).numpy() * 0.1 for rec in seconds for s in rec]
    with torch.no_grad():
        batch = stage.project_recordings(processor.audio_features(windows), [1, 2, 1])
        alone, start = [], 0
        for rec in seconds:
            own = windows[start : start + len(rec)]
            alone += stage.project_recordings(processor.audio_features(own), [len(rec)])
            start += len(rec)
    assert [b.shape for b in batch] == [a.shape for a in alone]
    for b, a in zip(batch, alone):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_greedy_ctc_collapses_repeats_and_drops_blanks():
    blank = 4
    frames = [blank, 1, 1, blank, 1, 2, 2, blank, blank, 3]
    logits = torch.nn.functional.one_hot(torch.tensor(frames), 5).float()
    assert greedy_ctc(logits.argmax(-1), blank) == [1, 1, 2, 3]
    assert greedy_ctc(logits[:3].argmax(-1), blank) == [1]


def test_head_logits_are_scaled_dot_products_with_the_embeddings():
    E = torch.randn(10, 4)
    head = CTCHead(E)
    h = torch.randn(3, 4)
    logits = head(h)
    assert logits.shape == (3, 11)
    torch.testing.assert_close(logits[:, :10], h @ E.T)
    assert head.norm_penalty(E[:3] / E[:3].norm(dim=-1, keepdim=True) * head.reference_norm) < 1e-10


def lm_config(base, manifest, out, **kw):
    """A tiny LM-objective LoRA run on the same data (the stage after this one)."""
    return config(
        base, manifest, out, objective="lm", preset="lora", lora_r=4, pack_length=256, **kw
    )


def test_transcription_pairs_follow_the_task_field(manifest):
    samples = read_dataset(DatasetSpec(str(manifest)))
    pairs = [transcription_pair(s) for s in samples]
    assert pairs[0] is None  # task: instruct
    assert all(p is not None for p in pairs[1:])
    path, text = pairs[1]
    assert Path(path).is_absolute() and path.endswith("clip1.wav") and text


def test_ctc_stage_trains_the_projector_only_and_hands_off(base, manifest, tmp_path, monkeypatch):
    monkeypatch.setenv("AERO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "align"
    summary = train(
        config(base, manifest, out, eval_data=str(manifest), eval_every=3, eval_samples=4)
    )
    assert summary["step"] == 6 and summary["skipped"] == 1
    skipped = [json.loads(l) for l in (out / "skipped.jsonl").read_text().splitlines()]
    assert (
        len(skipped) == 1
        and "broken.wav" in skipped[0]["error"]
        and skipped[0]["sample"].endswith(":9")
    )
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert [("heldout_ctc_wer" in r) for r in rows] == [False, False, True, False, False, True]
    assert sum(r["samples"] for r in rows) == rows[-1]["samples_seen"]

    weights = load_file(out / "final" / "adapter.safetensors")
    assert set(weights) == {
        f"audio_modal_projector.{n}"
        for n, _ in make_tiny_model().audio_modal_projector.named_parameters()
    }
    original = AeroForConditionalGeneration.from_pretrained(base)
    assert not torch.equal(
        weights["audio_modal_projector.linear.weight"], original.audio_modal_projector.linear.weight
    )

    # Stage 2 starts from it: with projector_lr 0 its exported projector is the stage-1 projector
    # while the LoRA factors (lr > 0) move.
    lm = lm_config(
        base,
        manifest,
        tmp_path / "lm",
        batching="pack",
        max_steps=2,
        lr=1e-2,
        projector_lr=0.0,
        init_adapter=str(out / "final"),
    )
    train(lm)
    exported = load_file(tmp_path / "lm" / "final" / "adapter.safetensors")
    for k, v in weights.items():
        torch.testing.assert_close(exported[k], v)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in exported.items())

    # The ctc stage exports a projector only: it goes on from a projector adapter, and refuses one
    # with LoRA factors instead of merging them into the LM and dropping them from its export.
    train(
        config(
            base, manifest, tmp_path / "again", max_steps=1, lr=0.0, init_adapter=str(out / "final")
        )
    )
    again = load_file(tmp_path / "again" / "final" / "adapter.safetensors")
    for k, v in weights.items():
        torch.testing.assert_close(again[k], v)
    with pytest.raises(
        ConfigError, match="holds LoRA factors, which a 'projector' run would not export"
    ):
        train(
            config(
                base, manifest, tmp_path / "from-lora", init_adapter=str(tmp_path / "lm" / "final")
            )
        )


def test_ctc_stage_resumes_where_it_stopped(base, manifest, tmp_path, monkeypatch):
    monkeypatch.setenv("AERO_CACHE", str(tmp_path / "cache"))
    train(config(base, manifest, tmp_path / "a"))
    full = [
        json.loads(l)["loss"] for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    assert "adapter" not in train(config(base, manifest, tmp_path / "b"), stop_after=4)
    assert not (tmp_path / "b" / "final").exists()
    train(config(base, manifest, tmp_path / "b"))
    rows = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 4, 5, 6]  # step 4 redone from the step-3 state
    assert [r["loss"] for r in rows[4:]] == pytest.approx(full[3:], rel=1e-5)


def test_ctc_stage_reads_ahead_in_workers_with_the_same_batches(
    base, manifest, tmp_path, monkeypatch
):
    """num_workers > 0 decodes and featurises batches in other processes (a GPU step outruns one
    core): the same batches, losses and skipped rows as reading each batch in turn, also across
    a resume mid-epoch and into the next epoch."""
    monkeypatch.setenv("AERO_CACHE", str(tmp_path / "cache"))
    train(config(base, manifest, tmp_path / "a", max_steps=9))
    train(config(base, manifest, tmp_path / "b", max_steps=9, num_workers=2), stop_after=4)
    train(config(base, manifest, tmp_path / "b", max_steps=9, num_workers=2))

    def rows(run):
        return [json.loads(l) for l in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    sequential, ahead = rows("a"), [r for r in rows("b") if r["step"] != 4][:3] + rows("b")[4:]
    assert [r["step"] for r in ahead] == list(range(1, 10))
    assert [r["loss"] for r in ahead] == pytest.approx([r["loss"] for r in sequential], rel=1e-5)
    assert [r["samples"] for r in ahead] == [r["samples"] for r in sequential]
    # the time each step waited for its batch: all of the reading with 0 workers, less ahead
    assert all(0 <= r["data_wait_s"] <= r["step_s"] for r in sequential + ahead)
    skipped = (tmp_path / "b" / "skipped.jsonl").read_text().splitlines()
    assert len(skipped) == len((tmp_path / "a" / "skipped.jsonl").read_text().splitlines())


def test_bad_objective_and_missing_init_adapter_are_config_errors(base, manifest, tmp_path):
    with pytest.raises(ConfigError, match="objective"):
        config(base, manifest, tmp_path, objective="mse").validate()
    with pytest.raises(ConfigError, match="init_adapter .*nope does not exist"):
        train(config(base, manifest, tmp_path, objective="lm", init_adapter=str(tmp_path / "nope")))


def test_ctc_stage_trains_the_encoder_top_and_later_legs_carry_it(
    base, manifest, tmp_path, monkeypatch
):
    monkeypatch.setenv("AERO_CACHE", str(tmp_path / "cache"))
    top = config(base, manifest, tmp_path / "top", max_steps=4, encoder_layers=1, encoder_lr=1e-2)
    train(top)
    weights = load_file(tmp_path / "top" / "final" / "adapter.safetensors")
    encoder = {k for k in weights if k.startswith("audio_tower.")}
    original = AeroForConditionalGeneration.from_pretrained(base).state_dict()
    assert encoder and all(
        k.startswith(("audio_tower.layers.1.", "audio_tower.layer_norm.")) for k in encoder
    )
    assert "audio_tower.layers.1.fc1.weight" in encoder
    assert not torch.equal(
        weights["audio_tower.layers.1.fc1.weight"], original["audio_tower.layers.1.fc1.weight"]
    )

    # resumed mid-run, the encoder layers come back with the rest of the state
    train(
        config(base, manifest, tmp_path / "b", max_steps=4, encoder_layers=1, encoder_lr=1e-2),
        stop_after=2,
    )
    train(config(base, manifest, tmp_path / "b", max_steps=4, encoder_layers=1, encoder_lr=1e-2))
    resumed = load_file(tmp_path / "b" / "final" / "adapter.safetensors")
    for k in encoder:
        torch.testing.assert_close(resumed[k], weights[k])

    # an LM leg and a CTC leg that train no encoder layer carry them into their exports unchanged
    lm = lm_config(
        base, manifest, tmp_path / "lm", max_steps=1, init_adapter=str(tmp_path / "top" / "final")
    )
    train(lm)
    train(
        config(
            base,
            manifest,
            tmp_path / "again",
            max_steps=1,
            init_adapter=str(tmp_path / "top" / "final"),
        )
    )
    for leg in ("lm", "again"):
        exported = load_file(tmp_path / leg / "final" / "adapter.safetensors")
        for k in encoder:
            torch.testing.assert_close(exported[k], weights[k])
    model = AeroForConditionalGeneration.from_pretrained(tmp_path / "lm" / "final" / "model")
    torch.testing.assert_close(
        model.state_dict()["audio_tower.layers.1.fc1.weight"],
        weights["audio_tower.layers.1.fc1.weight"],
    )

    with pytest.raises(ConfigError, match="encoder_layers is for objective ctc"):
        config(base, manifest, tmp_path, objective="lm", encoder_layers=1).validate()
    with pytest.raises(ConfigError, match="encoder_layers is 3; the encoder has 2 layers"):
        train(config(base, manifest, tmp_path / "deep", encoder_layers=3))


def test_profile_steps_write_where_each_stage_spent_its_steps(
    base, manifest, tmp_path, monkeypatch
):
    monkeypatch.setenv("AERO_CACHE", str(tmp_path / "cache"))
    for name, make in (("ctc", config), ("lm", lm_config)):
        out = tmp_path / name
        train(make(base, manifest, out, max_steps=5, profile_steps=2))
        table = (out / "profile.txt").read_text()
        assert table.startswith("2 steps profiled after 3")
        for phase in ("aero.data", "aero.forward", "aero.backward", "aero.optimizer"):
            assert phase in table, (name, phase)
        assert "aten::" in table  # the operators under them
    plain = tmp_path / "plain"
    train(config(base, manifest, plain, max_steps=2))
    assert not (plain / "profile.txt").exists()
    with pytest.raises(ConfigError, match="profile_steps"):
        config(base, manifest, tmp_path / "bad", profile_steps=-1).validate()
