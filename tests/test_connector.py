"""The "ctc" projector (aero-mini v2): CTC emissions decide how many tokens the LM reads, the
engine and the training stages use the same emissions as the ids count, the published path is
unchanged, and every export records its projector and lineage."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aero.adapter import adapter_metadata
from aero.engine import Engine
from aero.modeling import CtcConnector
from aero.models import projector_settings
from aero.train.config import ConfigError, TrainConfig, apply_overrides
from aero.train.lineage import lineage_of
from aero.train.run import train
from conftest import make_tiny_model, make_tiny_processor, tiny_config, tone, write_manifest

CTC = dict(projector_type="ctc", projector_stack=2, connector_layers=1)


def test_compress_keeps_one_token_per_emission_weighted_by_the_posteriors():
    connector = CtcConnector(tiny_config(**CTC))
    H = 32
    embeddings = torch.eye(H)[:6] * 3  # V = 6 tokens; the blank is the basis vector 6
    with torch.no_grad():
        connector.blank.copy_(torch.eye(H)[6] * 3)
    # frames whose most likely class is: blank, 2, 2, blank, 4, 1, 1, 1, blank, 2
    best = [6, 2, 2, 6, 4, 1, 1, 1, 6, 2]
    h = torch.stack([torch.eye(H)[b] * 2 + 0.01 * i for i, b in enumerate(best)])
    out = connector.compress(h, embeddings)
    assert out.shape == (4, H)  # emissions 2, 4, 1, 2: runs merged, blanks dropped
    logits = connector.logits(h, embeddings)
    probs = logits[:, :6].softmax(-1)
    runs = [[1, 2], [4], [5, 6, 7], [9]]
    for row, frames in zip(out, runs):
        p = probs[frames].sum(0)
        torch.testing.assert_close(row, (p / p.sum()) @ embeddings)
    # the most likely token of each emission is the one its frames emitted
    assert (out @ embeddings.T).argmax(-1).tolist() == [2, 4, 1, 2]
    # "argmax": each emission is its token's own embedding, exactly
    torch.testing.assert_close(
        connector.compress(h, embeddings, "argmax"), embeddings[[2, 4, 1, 2]], rtol=0, atol=0
    )
    # nothing but blanks: no token at all
    assert connector.compress(torch.eye(H)[6].expand(5, H) * 2, embeddings).shape == (0, H)
    # tokens outside the vocabulary the head was trained on are never emitted
    with torch.no_grad():
        connector.vocab_mask.zero_()
        connector.vocab_mask[[1, 2]] = True
    out = connector.compress(h, embeddings)
    assert (out @ embeddings.T).argmax(-1).tolist() == [2, 1, 2]  # token 4 is not emittable


def test_a_grown_connector_computes_what_it_did_until_it_trains():
    model = make_tiny_model(**CTC).eval()
    windows = [torch.randn(9, 64), torch.randn(4, 64)]
    before = model.audio_modal_projector.frames(windows)
    model.grow_connector(3)
    assert len(model.audio_modal_projector.layers) == 3 and model.config.connector_layers == 3
    for a, b in zip(before, model.audio_modal_projector.frames(windows)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="it grows, it does not shrink to 2"):
        model.grow_connector(2)
    with pytest.raises(ValueError, match="Only a 'ctc' connector grows"):
        make_tiny_model().grow_connector(2)


def test_published_linear_path_is_unchanged_by_the_per_window_projection():
    model = make_tiny_model()
    windows = [torch.randn(7, 32), torch.randn(3, 32)]
    expected = model.audio_modal_projector(torch.cat(windows))
    torch.testing.assert_close(model.project_audio(windows), expected)
    stacked = make_tiny_model(projector_stack=4, projector_type="mlp")
    got = stacked.project_windows(windows)
    assert [g.shape[0] for g in got] == [2, 1]  # ceil(7/4), ceil(3/4): no frame dropped


@pytest.fixture(scope="module")
def ctc_engine():
    torch.manual_seed(0)
    model = make_tiny_model(**CTC)
    with torch.no_grad():  # a blank that wins about half the frames: some emissions, not all
        model.audio_modal_projector.blank.copy_(model.get_input_embeddings().weight.mean(0) * 4)
    return Engine(model, make_tiny_processor(audio_stack=2), batch_size=4)


def test_engine_reads_the_connector_emissions_and_batches_equal_one_by_one(ctc_engine):
    audios = [tone(2.0, 300), tone(33.0, 500, seed=1), tone(1.2, 700, seed=2)]
    model, processor = ctc_engine.model, ctc_engine.processor
    prepared = ctc_engine.prepare(processor.transcription_messages(audios[1]))
    placeholders = prepared.input_ids.count(processor.audio_token_id)
    with torch.no_grad():
        values, frames = processor.audio_features(prepared.windows)
        emitted = model.project_windows(model.encode_windows(values, frames))
    positional = sum(((f // 2 + 1) // 2 + 1) // 2 for f in frames.sum(-1).tolist())
    assert placeholders == sum(e.shape[0] for e in emitted)
    assert 0 < placeholders < positional  # compressed below the 12.5/s frame rate
    together = ctc_engine.transcribe(audios)
    alone = [ctc_engine.transcribe([a])[0] for a in audios]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    # every window counted for a decoded request was used once, then let go; only the windows of
    # the request prepared above and never decoded are still held
    assert set(ctc_engine.compressed._done) == {id(w) for w in prepared.windows}


def test_connector_alone_transcribes_the_tokens_the_lm_reads(ctc_engine):
    from aero.train.align import CtcTranscriber

    model, processor = ctc_engine.model, ctc_engine.processor
    audios = [tone(2.0, 300), tone(1.2, 700, seed=2), tone(0.001, 300)]  # one window each
    texts = CtcTranscriber("alone", model, processor, batch_size=2).transcribe(audios)
    projector = model.audio_modal_projector
    vocabulary = projector.vocab_mask.nonzero()[:, 0]
    for audio, text in zip(audios[:2], texts):
        with torch.no_grad():
            values, frames = processor.audio_features(processor.load_windows([audio]).windows)
            (window,) = model.stack_frames(model.encode_windows(values, frames))
            embeddings = model.get_input_embeddings().weight
            best = projector.logits(projector.frames([window])[0], projector.emittable(embeddings))
            best = best.argmax(-1).tolist()
            emitted = model.ctc_parts(model.encode_windows(values, frames))[0].emitted
        blank = len(vocabulary)
        ids = [
            int(vocabulary[b]) for k, b in enumerate(best) if b != blank and best[k - 1 : k] != [b]
        ]
        assert len(ids) == emitted.shape[0] > 0  # one LM position per token of the text
        assert text == processor.tokenizer.decode(ids).strip()
        # with "argmax" emissions the LM reads exactly those tokens' own embeddings
        model.config.ctc_emissions = "argmax"
        try:
            with torch.no_grad():
                hard = model.ctc_parts(model.encode_windows(values, frames))[0].emitted
        finally:
            model.config.ctc_emissions = "mix"
        torch.testing.assert_close(hard, embeddings[ids], rtol=0, atol=0)
    assert texts[2] == ""  # too short for one frame


def test_joint_decoding_writes_only_what_the_connector_can_emit(ctc_engine):
    """Transcripts are decoded jointly with the connector's CTC scores (greedy and beams), so a
    token the head cannot emit is never written; a chat reply is the LM's alone."""
    from aero.decoding import GenerationOptions

    processor = ctc_engine.processor
    mask = ctc_engine.model.audio_modal_projector.vocab_mask
    saved = mask.clone()
    mask[1::2] = False  # the head emits every other token only
    try:
        audio = tone(2.0, 300)
        options = GenerationOptions(max_new_tokens=12)
        lm_alone = ctc_engine.transcribe([audio], options=replace(options, ctc_weight=0))[0]
        assert any(not mask[t] for t in lm_alone.token_ids)  # the random LM wanders off
        for beams in (1, 2):
            joint = ctc_engine.transcribe([audio], options=replace(options, num_beams=beams))[0]
            assert joint.token_ids and all(mask[t] for t in joint.token_ids)
        messages = processor.transcription_messages(audio)
        chats = [
            ctc_engine.chat(messages, replace(options, ctc_weight=w)).token_ids for w in (0, 0.5)
        ]
        assert chats[0] == chats[1]
    finally:
        mask.copy_(saved)


def test_hf_style_call_without_the_counter_is_a_clear_error(ctc_engine):
    model = ctc_engine.model
    processor = make_tiny_processor(audio_stack=2)  # no counter: ids from lengths
    inputs = processor(messages=processor.transcription_messages(tone(33.0, 500, seed=1)))
    with pytest.raises(ValueError, match="projector_type 'ctc'"):
        model(**inputs)


def test_projector_settings_from_adapter_metadata():
    assert projector_settings({}) == {"projector_type": "mlp", "projector_stack": 4}
    meta = {"projector_type": "ctc", "projector_stack": "2", "connector_layers": "2"}
    assert projector_settings(meta) == {
        "projector_type": "ctc",
        "projector_stack": 2,
        "connector_layers": 2,
    }
    assert projector_settings(meta | {"ctc_emissions": "argmax"})["ctc_emissions"] == "argmax"
    with pytest.raises(ValueError, match="ctc_emissions must be one of"):
        CtcConnector(tiny_config(**CTC, ctc_emissions="soft"))


def _tiny_connector_run(tmp_path, monkeypatch) -> tuple[dict, Path]:
    """A tiny ctc-connector base model and a 6-clip manifest made by a recipe with seed 7."""
    monkeypatch.setenv("AERO_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "base"
    make_tiny_model(**CTC).save_pretrained(base)
    make_tiny_processor(system_prompt=None, audio_stack=2).save_pretrained(base)
    data = write_manifest(tmp_path / "data", [1.0, 2.5, 0.8, 3.1, 1.7, 0.6])
    (tmp_path / "data" / "train.synth.json").write_text(
        json.dumps({"recipe": "r", "split": "train", "seed": 7, "samples": 6})
    )
    return dict(model=str(base), data=[{"path": str(data)}], progress=False, bf16=False), data


def test_ctc_then_lm_stage_on_the_connector_with_lineage(tmp_path, monkeypatch):
    common, data = _tiny_connector_run(tmp_path, monkeypatch)
    ctc = apply_overrides(
        TrainConfig(),
        {**common, "output_dir": str(tmp_path / "ctc"), "objective": "ctc", "token_budget": 200,
         "max_steps": 4, "lr": 1e-2, "save_every": 2, "connector_layers": 2},
    )  # fmt: skip
    train(ctc)  # the base's 1-layer connector grown to 2 layers
    first = tmp_path / "ctc" / "final" / "adapter.safetensors"
    weights = load_file(first)
    assert "audio_modal_projector.blank" in weights and "audio_modal_projector.log_scale" in weights
    assert any(k.startswith("audio_modal_projector.layers.0.") for k in weights)
    meta = adapter_metadata(first)
    assert projector_settings(meta) == CTC | {"connector_layers": 2, "ctc_emissions": "mix"}
    texts = [
        json.loads(r)["messages"][1]["content"][0]["text"] for r in data.read_text().splitlines()
    ]
    ids = {i for t in texts for i in make_tiny_processor()._encode(t)}
    assert weights["audio_modal_projector.vocab_mask"].nonzero()[:, 0].tolist() == sorted(ids)
    (only,) = lineage_of(first)
    assert only["objective"] == "ctc" and only["steps"] == 4 and only["data"][0]["seed"] == 7

    # the LM leg reads the transcription rows only, as argmax emissions
    rows = [json.loads(r) for r in data.read_text().splitlines()]
    for k, row in enumerate(rows):
        row["task"] = "transcribe" if k % 2 else "instruct"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lm = apply_overrides(
        TrainConfig(),
        {**common, "output_dir": str(tmp_path / "lm"), "preset": "lora", "lora_r": 4,
         "pack_length": 2048, "max_steps": 2, "lr": 1e-2, "projector_lr": 1e-2,
         "init_adapter": str(first), "ctc_emissions": "argmax",
         "data": [{"path": str(data), "tasks": ["transcribe"], "weight": 0.5}]},
    )  # fmt: skip
    summary = train(lm)
    assert len(summary["losses"]) == 2 and all(torch.isfinite(torch.tensor(summary["losses"])))
    legs = lineage_of(tmp_path / "lm" / "final")
    assert [leg["objective"] for leg in legs] == ["ctc", "lm"] and legs[1]["tokens"] > 0
    assert legs[1]["data"][0]["tasks"] == ["transcribe"] and legs[1]["data"][0]["weight"] == 0.5
    meta = adapter_metadata(tmp_path / "lm" / "final" / "adapter.safetensors")
    assert meta["ctc_emissions"] == "argmax"
    assert meta["connector_layers"] == "2"  # the 1-layer base grew to its init adapter's depth
    saved = json.loads((tmp_path / "lm" / "final" / "model" / "config.json").read_text())
    assert saved["ctc_emissions"] == "argmax" and saved["connector_layers"] == 2
    exported = load_file(tmp_path / "lm" / "final" / "adapter.safetensors")
    for name, tensor in weights.items():
        if ".summary." in name:  # the summary token trains in the LM stage
            assert not torch.equal(exported[name], tensor)
        else:  # the rest of the connector is frozen there (its emissions carry no gradient)
            torch.testing.assert_close(exported[name], tensor)


def test_a_leg_whose_clock_runs_out_exports_what_it_trained(tmp_path, monkeypatch):
    common, _ = _tiny_connector_run(tmp_path, monkeypatch)
    legs = {
        "ctc": {"objective": "ctc", "token_budget": 200, "lr": 1e-2},
        "lm": {"preset": "lora", "lora_r": 4, "pack_length": 2048, "lr": 1e-2},
    }
    for name, settings in legs.items():
        config = {**common, **settings, "output_dir": str(tmp_path / name)}
        config |= {"max_steps": 50, "max_minutes": 1e-6, "save_every": 50}
        summary = train(apply_overrides(TrainConfig(), config))
        assert summary["step"] == 1  # stopped by the clock after its first step, not at 50
        (record,) = lineage_of(tmp_path / name / "final" / "adapter.safetensors")
        assert record["steps"] == 1 and record["config"]["max_minutes"] == 1e-6
        # saved for a rerun to continue: the checkpoint of that step
        saved = "ctc_state.pt" if name == "ctc" else "checkpoints/step-00000001"
        assert (tmp_path / name / saved).exists()
    with pytest.raises(ConfigError, match="max_minutes"):
        apply_overrides(TrainConfig(), {**common, "max_minutes": 0}).validate()
    with pytest.raises(ConfigError, match="ctc_emissions must be mix or argmax"):
        apply_overrides(TrainConfig(), {**common, "ctc_emissions": "soft"}).validate()
    with pytest.raises(ConfigError, match="`tasks` of .* must be a list of task names"):
        apply_overrides(TrainConfig(), {**common, "data": [{"path": "x", "tasks": "long"}]})


def test_adapter_part_splits_a_projector_from_its_lora_and_joins_another(tmp_path):
    from aero.adapter import adapter_part, save_adapter

    projector = {"audio_modal_projector.linear.weight": torch.ones(2, 2)}
    lora = {"language_model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(1, 2)}
    lineage = json.dumps([{"run": "a", "objective": "ctc"}])
    meta = {"preset": "lora", "lora_r": 8, "lora_alpha": 16, "lineage": lineage}
    full = save_adapter(tmp_path / "full.safetensors", {**projector, **lora}, meta)
    part = adapter_part(full, tmp_path / "part.safetensors")
    assert set(load_file(part)) == set(projector)
    kept = adapter_metadata(part)
    assert kept["preset"] == "projector" and "lora_r" not in kept and kept["lineage"] == lineage
    new = save_adapter(tmp_path / "new.safetensors", {k: v * 2 for k, v in projector.items()}, {})
    joined = adapter_part(new, tmp_path / "joined.safetensors", lora_from=full)
    weights = load_file(joined)
    assert torch.equal(weights["audio_modal_projector.linear.weight"], torch.full((2, 2), 2.0))
    assert set(weights) == set(projector) | set(lora)
    assert adapter_metadata(joined)["lora_r"] == "8"
