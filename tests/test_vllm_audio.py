"""vLLM's "ctc" front (`aero.vllm.audio.CtcFront`, importable without vLLM): read from a saved
checkpoint directory, it gives each window the summary input and the emitted token ids that
aero's own model computes, so vLLM's prompt has the engine's token count. No vLLM needed."""

from types import SimpleNamespace

import pytest
import torch

from aero.audio import mel_frames
from aero.vllm import prompt
from aero.vllm.audio import CtcFront, load_ctc_front
from conftest import make_tiny_model, make_tiny_processor, tone

CTC = dict(projector_type="ctc", projector_stack=2, connector_layers=1, ctc_emissions="argmax")


def test_ctc_front_gives_aeros_summary_inputs_and_emissions(tmp_path):
    model = make_tiny_model(**CTC)
    model.save_pretrained(tmp_path)
    front = load_ctc_front(str(tmp_path), model.config)
    processor = make_tiny_processor(audio_stack=2)
    windows, _ = prompt.recording_windows(tone(65.0), 2)  # 30 s, 30 s, 5 s
    values = prompt.window_features(processor.feature_extractor, windows)
    got = front.emissions(list(values), [mel_frames(len(w)) for w in windows])

    batch, mask = processor.audio_features(windows)
    with torch.no_grad():
        parts = model.ctc_parts(model.encode_windows(batch, mask))
    embeddings = model.get_input_embeddings().weight
    assert len(got) == len(parts) == 3
    for (mean, ids), part in zip(got, parts):
        assert 0 < len(ids) == len(part.emitted)
        torch.testing.assert_close(mean, part.mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(embeddings[ids], part.emitted, rtol=0, atol=0)


def test_ctc_front_refuses_mixed_emissions_and_a_directory_without_weights(tmp_path):
    config = make_tiny_model(**{**CTC, "ctc_emissions": "mix"}).config
    with pytest.raises(ValueError, match="ctc_emissions 'argmax' only"):
        CtcFront(config)
    with pytest.raises(ValueError, match="has none"):
        load_ctc_front(str(tmp_path), SimpleNamespace(**CTC))
