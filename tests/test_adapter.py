"""Adapter files: plain weights replace, LoRA factors merge, float16 copies for shipping."""

import pytest
import torch

from aero.adapter import adapter_metadata, apply_adapter, convert_adapter, save_adapter
from conftest import make_tiny_model


def test_adapter_replaces_and_merges_and_converts(tmp_path):
    model = make_tiny_model()
    q = "language_model.model.layers.0.self_attn.q_proj"
    base_q = model.get_parameter(f"{q}.weight").detach().clone()
    torch.manual_seed(0)
    a, b = torch.randn(4, 32), torch.randn(32, 4)
    projector = torch.randn_like(model.audio_modal_projector.linear.weight)
    weights = {
        f"{q}.lora_A.default.weight": a,
        f"{q}.lora_B.default.weight": b,
        "audio_modal_projector.linear.weight": projector,
    }
    path = save_adapter(
        tmp_path / "adapter.safetensors", weights, {"preset": "lora", "lora_r": 4, "lora_alpha": 8}
    )
    apply_adapter(model, path)
    torch.testing.assert_close(model.get_parameter(f"{q}.weight"), base_q + 2.0 * b @ a)
    torch.testing.assert_close(model.audio_modal_projector.linear.weight, projector)

    half = convert_adapter(path, tmp_path / "half.safetensors")
    assert half.stat().st_size < 0.6 * path.stat().st_size
    assert adapter_metadata(half)["lora_alpha"] == "8"
    again = make_tiny_model()
    apply_adapter(again, tmp_path)  # a directory holding adapter.safetensors works too
    torch.testing.assert_close(
        again.get_parameter(f"{q}.weight"), model.get_parameter(f"{q}.weight")
    )


def test_adapter_for_another_model_is_refused(tmp_path):
    path = save_adapter(tmp_path / "adapter.safetensors", {"not.a.weight": torch.zeros(2)}, {})
    with pytest.raises(ValueError, match="weights this model does not have"):
        apply_adapter(make_tiny_model(), path)
    with pytest.raises(FileNotFoundError):
        apply_adapter(make_tiny_model(), tmp_path / "missing.safetensors")
