"""Training end to end on CPU: files written, resume equals an uninterrupted run, FSDP2 = one
process."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from aero.adapter import apply_adapter
from aero.data.manifest import ManifestError
from aero.modeling import AeroForConditionalGeneration
from aero.train.config import ConfigError, TrainConfig, load_config
from aero.train.run import train
from conftest import tone, write_manifest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    path = write_manifest(root, [1.0, 2.5, 0.8, 3.1, 1.7, 0.6, 2.2, 1.3])
    bad = root / "audio" / "broken.wav"
    bad.write_text("not audio")
    rows = path.read_text().splitlines()
    broken = json.loads(rows[0])
    broken["messages"][0]["content"][0]["audio_url"]["url"] = "audio/broken.wav"
    escaping = json.loads(rows[1])
    escaping["messages"][0]["content"][0]["audio_url"]["url"] = "../../etc/passwd"
    path.write_text("\n".join(rows + [json.dumps(broken), json.dumps(escaping)]) + "\n")
    return path


def config(base, manifest, out, **kw):
    values = dict(
        model=str(base),
        output_dir=str(out),
        data=[{"path": str(manifest)}],
        preset="lora",
        lora_r=4,
        batching="pack",
        pack_length=256,
        max_steps=4,
        lr=3e-3,
        save_every=2,
        progress=False,
        seed=1,
    )
    values.update(kw)
    cfg = TrainConfig()
    from aero.train.config import apply_overrides

    return apply_overrides(cfg, values)


def read_metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_end_to_end_training_writes_checkpoint_metrics_and_loadable_model(
    base, manifest, tmp_path, monkeypatch
):
    monkeypatch.setenv("AERO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    summary = train(
        config(
            base,
            manifest,
            out,
            eval_data=str(manifest),
            eval_every=2,
            eval_samples=3,
            eval_max_new_tokens=4,
        )
    )
    assert summary["step"] == 4 and summary["skipped"] == 2  # the broken file and the escaping path
    skipped = [json.loads(l) for l in (out / "skipped.jsonl").read_text().splitlines()]
    assert any("escapes the data root" in s["error"] for s in skipped)
    assert any("broken.wav" in s["error"] for s in skipped)

    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [("heldout_wer" in r) for r in rows] == [False, True, False, True]
    assert rows[-1]["heldout_utterances"] == 3
    assert (
        math.isfinite(rows[-1]["heldout_wer"]) and 0 < rows[-1]["heldout_wer"] < 2
    )  # checked exactly below
    if not torch.cuda.is_available():  # train() runs on CUDA with bf16 autocast when it can
        # Pinned on CPU float32 (torch 2.13, AVX512; AVX2 agrees to 1e-7): a change to the loss,
        # the data order, the packing or the optimizer moves these.
        assert rows[0]["loss"] == pytest.approx(9.077891, rel=1e-3)  # before any update
        assert rows[-1]["loss"] == pytest.approx(7.078407, rel=1e-3)
    assert rows[-1]["samples_seen"] == sum(r["samples"] for r in rows)
    for r in rows:
        assert (
            math.isfinite(r["loss"])
            and r["tokens"] > 0
            and 0 <= r["padding"] < 0.5
            and r["flops"] > 0
        )
        assert r["skipped"] == 2
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step-00000002", "step-00000004"]
    assert {p.name for p in ckpts[-1].iterdir()} == {
        "trainable.safetensors",
        "optimizer.pt",
        "trainer.pt",
        "state.json",
    }
    assert json.loads((ckpts[-1] / "state.json").read_text())["step"] == 4
    trained = load_file(ckpts[-1] / "trainable.safetensors")
    assert any("lora_A" in k for k in trained) and any(
        "audio_modal_projector" in k for k in trained
    )

    model = AeroForConditionalGeneration.from_pretrained(out / "final" / "model")
    assert not any("lora" in k for k in model.state_dict())  # merged
    from aero.processing import AeroProcessor

    processor = AeroProcessor.from_pretrained(out / "final" / "model")
    inputs = processor(
        messages=[{"role": "user", "content": [{"type": "audio", "audio": tone(1.0)}]}]
    )
    assert (
        model.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1]
        == inputs["input_ids"].shape[1] + 3
    )
    # The adapter on the base model is the exported model.
    rebuilt = AeroForConditionalGeneration.from_pretrained(base)
    apply_adapter(rebuilt, out / "final" / "adapter.safetensors")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[k], v)
    assert (out / "final" / "adapter.safetensors").stat().st_size < 200_000
    # The last curve point is the step-4 model's score: the exported model, scored again on the
    # same clips, gives the same WER and the same first hypothesis.
    from aero.train.heldout import heldout_items, heldout_wer

    again = heldout_wer(model, processor, heldout_items(manifest, 3), max_new_tokens=4)
    assert again["heldout_utterances"] == 3
    assert rows[-1]["heldout_wer"] == pytest.approx(again["heldout_wer"])
    assert rows[-1]["heldout_example"] == again["heldout_example"]
    # The merged LoRA really changed the LM (the adapter is not a no-op).
    original = AeroForConditionalGeneration.from_pretrained(base)
    key = "language_model.model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(original.state_dict()[key], model.state_dict()[key])


def test_a_failing_heldout_check_loses_no_training(base, manifest, tmp_path, monkeypatch):
    # a stage 2e run lost its last 20 steps when the check at the final step raised before the save
    monkeypatch.setenv("AERO_CACHE", str(tmp_path / "cache"))
    import aero.train.heldout

    def broken(*args, **kwargs):
        raise ImportError("cannot import name 'x'")

    monkeypatch.setattr(aero.train.heldout, "heldout_wer", broken)
    out = tmp_path / "run"
    summary = train(
        config(
            base, manifest, out, max_steps=2, eval_data=str(manifest), eval_every=2, eval_samples=2
        )
    )
    assert summary["step"] == 2 and (out / "final" / "adapter.safetensors").is_file()
    assert (out / "checkpoints" / "step-00000002").is_dir()
    assert read_metrics(out)[-1]["heldout_error"] == "ImportError: cannot import name 'x'"


def test_training_reduces_loss_on_a_tiny_set(base, manifest, tmp_path, monkeypatch):
    monkeypatch.setenv("AERO_CACHE", str(tmp_path / "cache"))
    summary = train(
        config(
            base, manifest, tmp_path / "run", preset="full", max_steps=12, lr=1e-2, save_every=100
        )
    )
    assert summary["losses"][-1] < 0.5 * summary["losses"][0]


def test_strict_mode_fails_on_unreadable_sample(base, manifest, tmp_path, monkeypatch):
    monkeypatch.setenv("AERO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ManifestError, match="broken.wav|escapes the data root"):
        train(config(base, manifest, tmp_path / "run", strict_data=True))


def test_resume_after_kill_gives_the_same_loss_curve(base, manifest, tmp_path, monkeypatch):
    monkeypatch.setenv("AERO_CACHE", str(tmp_path / "cache"))
    full = train(
        config(
            base,
            manifest,
            tmp_path / "a",
            max_steps=6,
            save_every=3,
            batching="budget",
            token_budget=300,
        )
    )["losses"]
    first = train(
        config(
            base,
            manifest,
            tmp_path / "b",
            max_steps=6,
            save_every=3,
            batching="budget",
            token_budget=300,
        ),
        stop_after=3,
    )
    assert first["step"] == 3 and not (tmp_path / "b" / "final").exists()
    second = train(
        config(
            base,
            manifest,
            tmp_path / "b",
            max_steps=6,
            save_every=3,
            batching="budget",
            token_budget=300,
        )
    )
    assert second["step"] == 6
    curve = [r["loss"] for r in read_metrics(tmp_path / "b")]
    assert curve == pytest.approx(full, rel=1e-6)


def test_a_finished_run_extends_with_a_larger_max_steps(base, manifest, tmp_path, monkeypatch):
    """How aero-mini's stage 2 went on past its first schedule: rerun with max_steps raised."""
    monkeypatch.setenv("AERO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert train(config(base, manifest, out, max_steps=4, save_every=2))["step"] == 4
    first_export = (out / "final" / "adapter.safetensors").read_bytes()
    summary = train(config(base, manifest, out, max_steps=6, save_every=2))
    assert summary["step"] == 6
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert (
        rows[3]["lr"] == 0.0 and rows[4]["lr"] > 0.0
    )  # the cosine is stretched over 6 steps from step 4 on
    assert (
        rows[4]["samples_seen"] > rows[3]["samples_seen"]
    )  # the data order goes on, not from the start
    assert (out / "final" / "adapter.safetensors").read_bytes() != first_export


def test_schedule_steps_stops_a_run_early_on_the_full_runs_schedule(
    base, manifest, tmp_path, monkeypatch
):
    """max_steps 3 of a 6-step cosine: the same learning rates and losses as the first 3 steps of
    the 6-step run, an export at step 3, and going on to 6 equals the uninterrupted run."""
    monkeypatch.setenv("AERO_CACHE", str(tmp_path / "cache"))
    train(config(base, manifest, tmp_path / "whole", max_steps=6, warmup_steps=1))
    whole = read_metrics(tmp_path / "whole")
    out = tmp_path / "early"
    assert (
        train(config(base, manifest, out, max_steps=3, schedule_steps=6, warmup_steps=1))["step"]
        == 3
    )
    assert (out / "final" / "adapter.safetensors").is_file()
    train(config(base, manifest, out, max_steps=6, schedule_steps=6, warmup_steps=1))
    early = read_metrics(out)
    assert [r["step"] for r in early] == [1, 2, 3, 4, 5, 6]
    assert [r["lr"] for r in early] == pytest.approx([r["lr"] for r in whole])
    assert [r["loss"] for r in early] == pytest.approx([r["loss"] for r in whole], rel=1e-4)
    with pytest.raises(ConfigError, match="schedule_steps"):
        config(base, manifest, out, max_steps=6, schedule_steps=3).validate()


def test_init_adapter_continues_a_lora_run_and_exports_it_whole(
    base, manifest, tmp_path, monkeypatch
):
    """A new run (new schedule, new data) from an earlier LoRA run's adapter: its LoRA factors go on
    training instead of vanishing into the base, so the new export alone reproduces the model."""
    monkeypatch.setenv("AERO_CACHE", str(tmp_path / "cache"))
    first = tmp_path / "first"
    train(config(base, manifest, first, max_steps=2))
    adapter = first / "final" / "adapter.safetensors"
    # lr 0: the second run changes nothing, so its export must equal the first one's.
    train(
        config(base, manifest, tmp_path / "second", max_steps=1, lr=0.0, init_adapter=str(adapter))
    )
    before, after = (
        load_file(adapter),
        load_file(tmp_path / "second" / "final" / "adapter.safetensors"),
    )
    assert set(before) == set(after) and any(".lora_B" in k for k in before)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert any(
        before[k].abs().sum() > 0 for k in before if ".lora_B" in k
    )  # trained, not the zero init

    with pytest.raises(ConfigError, match="LoRA r=4, alpha=32; this run has lora_r=8"):
        train(config(base, manifest, tmp_path / "r8", lora_r=8, init_adapter=str(adapter)))
    with pytest.raises(ConfigError, match="set lora_targets"):
        train(
            config(
                base,
                manifest,
                tmp_path / "targets",
                lora_targets=["q_proj"],
                init_adapter=str(adapter),
            )
        )
    with pytest.raises(ConfigError, match="would not export"):
        train(
            config(
                base,
                manifest,
                tmp_path / "projector",
                preset="projector",
                init_adapter=str(adapter),
            )
        )


def test_fsdp2_two_processes_match_one_process(base, manifest, tmp_path):
    """torchrun with 2 CPU ranks (gloo, FSDP2) vs one process accumulating the same 2 batches."""
    env = {**os.environ, "AERO_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    common = dict(
        preset="full", max_steps=3, save_every=100, lr=1e-2, batching="fixed", batch_size=2
    )
    single_cfg = config(base, manifest, tmp_path / "single", grad_accum=2, **common)
    dist_cfg = config(base, manifest, tmp_path / "dist", grad_accum=1, **common)
    for name, cfg in (("single", single_cfg), ("dist", dist_cfg)):
        values = {k: v for k, v in vars(cfg).items()}
        values["data"] = [{"path": str(manifest)}]
        values["betas"] = list(values["betas"])
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(values))
    subprocess.run(
        [sys.executable, "-m", "aero.cli", "train", str(tmp_path / "single.yaml")],
        env=env,
        check=True,
        capture_output=True,
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "aero.cli",
            "train",
            str(tmp_path / "dist.yaml"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    single = [r["loss"] for r in read_metrics(tmp_path / "single")]
    dist = [r["loss"] for r in read_metrics(tmp_path / "dist")]
    assert len(single) == len(dist) == 3
    assert dist == pytest.approx(single, rel=1e-4)
    a = load_file(tmp_path / "single" / "final" / "adapter.safetensors")
    b = load_file(tmp_path / "dist" / "final" / "adapter.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5)


def test_config_yaml_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    (tmp_path / "train.jsonl").write_text("")
    path.write_text("model: m\nlr: 0.01\ndata:\n  - path: train.jsonl\n    weight: 2\n")
    cfg = load_config(path, ["max_steps=7", "preset=full"])
    assert cfg.lr == 0.01 and cfg.max_steps == 7 and cfg.preset == "full"
    assert cfg.data[0].weight == 2 and cfg.data[0].path == str(tmp_path / "train.jsonl")
    with pytest.raises(ConfigError, match="Unknown config key 'learning_rate'"):
        load_config(path, ["learning_rate=1"])
    with pytest.raises(ConfigError, match="preset must be one of"):
        load_config(path, ["preset=everything"]).validate()
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def _default(key: str):
    import dataclasses

    field = {f.name: f for f in dataclasses.fields(TrainConfig)}[key]
    value = (
        field.default_factory()
        if field.default_factory is not dataclasses.MISSING
        else field.default
    )
    return list(value) if isinstance(value, tuple) else value


def test_shipped_configs_load():
    """Every shipped training config (configs/*.yaml) loads into a valid TrainConfig holding what
    its YAML says, and every synthesis recipe (configs/data/*.yaml) into a Recipe likewise."""
    import dataclasses

    from aero.data.synth.recipes import RECIPES, load_recipe

    root = Path(__file__).parent.parent / "configs"
    configs = sorted(root.glob("*.yaml"))
    assert {"example.yaml", "aero-mini.yaml", "aero-mini-align.yaml"} <= {p.name for p in configs}
    for path in configs:
        raw = yaml.safe_load(path.read_text())
        cfg = load_config(path).validate()
        assert isinstance(cfg, TrainConfig)
        assert cfg.model == raw["model"] and cfg.output_dir == raw["output_dir"], path.name
        for key, value in raw.items():
            if key == "data":
                assert len(cfg.data) == len(value), path.name
                for spec, entry in zip(cfg.data, value):
                    entry = {"path": entry} if isinstance(entry, str) else entry
                    # relative paths may be resolved against the YAML's folder
                    assert spec.path in (entry["path"], str(path.parent / entry["path"])), path.name
                    assert spec.weight == entry.get("weight", 1.0), path.name
            else:
                loaded = getattr(cfg, key)
                assert (list(loaded) if isinstance(loaded, tuple) else loaded) == value, (
                    path.name,
                    key,
                )
                # configs hold only overrides: a key that restates its default is noise
                assert (list(loaded) if isinstance(loaded, tuple) else loaded) != _default(key), (
                    path.name,
                    key,
                )
    example = load_config(root / "example.yaml")
    assert (example.preset, example.lora_r, example.lr, example.peak_flops) == (
        "lora",
        16,
        2.0e-4,
        989.0e12,
    )

    recipes = sorted((root / "data").glob("*.yaml"))
    assert {"aero-mini-train.yaml", "aero-mini-long.yaml"} <= {p.name for p in recipes}
    for path in recipes:
        raw = yaml.safe_load(path.read_text())
        recipe = load_recipe(str(path))
        assert recipe.name == path.stem
        base_splits = {s.name: s for s in RECIPES[raw.get("base", "train")].splits}
        expected = raw.get("only") or [
            *base_splits,
            *(n for n in raw["splits"] if n not in base_splits),
        ]
        assert [s.name for s in recipe.splits] == expected, path.name
        by_name = {s.name: s for s in recipe.splits}
        for split_name, changes in raw["splits"].items():
            if split_name not in by_name:
                continue
            split = by_name[split_name]
            for key, value in changes.items():
                loaded = getattr(split, key)
                assert (list(loaded) if isinstance(loaded, tuple) else loaded) == value, (
                    path.name,
                    split_name,
                    key,
                )
            # what the YAML leaves out comes from the base recipe's split
            base = base_splits.get(split_name)
            if base is not None:
                for f in dataclasses.fields(split):
                    if f.name not in changes:
                        assert getattr(split, f.name) == getattr(base, f.name), (
                            path.name,
                            split_name,
                            f.name,
                        )
    train_split = load_recipe(str(root / "data" / "aero-mini-train.yaml")).splits[0]
    assert (train_split.name, train_split.samples, train_split.long_seconds) == (
        "train",
        20000,
        (60, 240),
    )


def test_heldout_curve_points_equal_aero_eval_on_the_same_clips(base, manifest, tmp_path):
    """The learning curve decodes through the engine (default prompt, repetition guard) and scores
    like `aero eval`, so a curve point and an evaluation table agree on the same clips."""
    from aero.evaluation.runner import run_asr_eval
    from aero.evaluation.transcriber import AeroTranscriber
    from aero.models import load
    from aero.train.heldout import heldout_items, heldout_wer

    model, processor = load(str(base))
    items = heldout_items(manifest, 3)  # only the first rows are read: the broken ones come last
    assert len(items) == 3
    curve = heldout_wer(model, processor, items, max_new_tokens=8)
    table = run_asr_eval(
        AeroTranscriber("tiny", model, processor, max_new_tokens=8), items, output_dir=tmp_path
    )
    assert curve["heldout_utterances"] == 3 and curve["heldout_wer"] == pytest.approx(table["wer"])
    assert curve["heldout_wer"] > 0  # a random model: the scoring saw real hypotheses


def test_a_clock_schedule_decays_over_minutes_not_steps(monkeypatch):
    from aero.train import schedule

    now = [100.0]
    monkeypatch.setattr(schedule.time, "perf_counter", lambda: now[0])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = schedule.cosine_schedule(optimizer, 2, 10, 0.1, minutes=2.0)
    lrs = []
    for seconds in (0, 0, 60, 120, 600):  # steps 1..5 at these times since the start
        now[0] = 100.0 + seconds
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    # steps 1 (warm-up), then the cosine by the clock: 0 s peak, 60 s half-way, 120 s+ the floor
    assert lrs == pytest.approx([2 / 3, 1.0, 0.55, 0.1, 0.1])


def test_bf16_follows_the_config_else_where_its_matmuls_are_native(monkeypatch):
    from aero.train.config import use_bf16

    assert use_bf16(True, "cpu") is True and use_bf16(False, "cuda") is False  # as configured
    assert use_bf16(None, "cuda") is True and use_bf16(None, "mps") is False
    for avx512_bf16, amx, expected in (
        (False, False, False),
        (True, False, True),
        (False, True, True),
    ):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert use_bf16(None, "cpu") is expected
