"""Aero on vLLM: a plugin registered through vLLM's `vllm.general_plugins` entry point.

    pip install "aero[vllm]"               # GPU machines; CPU: scripts/vllm_env.sh
    vllm serve path/to/aero-checkpoint     # chat completions with input_audio, transcriptions

vLLM calls `register()` in every process it starts. It makes transformers resolve
`model_type: "aero"` (`aero.vllm.config`) and registers `AeroForConditionalGeneration` with
vLLM's model registry, lazily: nothing here imports vLLM or torch until vLLM asks for the model.
"""

from __future__ import annotations

ARCHITECTURE = "AeroForConditionalGeneration"  # config.json's `architectures`


def register() -> None:
    from vllm import ModelRegistry

    from aero.vllm.config import register_config

    register_config()
    ModelRegistry.register_model(ARCHITECTURE, "aero.vllm.model:AeroForConditionalGeneration")
