"""`model_type: "aero"` for the transformers that vLLM pins: the config and a light processor.

vLLM reads checkpoints through transformers' `AutoConfig` and finds chat templates through
`AutoProcessor`. aero's own classes need a newer transformers than vLLM's, so the vLLM
environment gets these two instead, registered by `aero.vllm.register`:
- `AeroVllmConfig`: the same config.json fields as `aero.modeling.AeroConfig` (the published
  `auto_map` remote-code pointers are dropped: this is the local code for them).
- `AeroProcessor` (named as checkpoints' `processor_class` names it, so `AutoProcessor` finds
  it; `aero.processing.AeroProcessor` is aero's own, for the newer transformers): the
  tokenizer, Whisper's feature extractor and the processor settings (`system_prompt`,
  `transcribe_prompt`); its chat template is always aero's format
  (`aero.vllm.prompt.chat_template`), as aero.processing.AeroProcessor renders prompts with
  its own format whatever jinja a checkpoint ships (the published one tests `'audio' in
  part`, which vLLM's `{"type": "audio"}` parts never satisfy).
"""

from __future__ import annotations

from transformers import AutoConfig, AutoProcessor, ProcessorMixin
from transformers.configuration_utils import PretrainedConfig
from transformers.models.auto import CONFIG_MAPPING

from aero.chat_format import (
    AUDIO_TOKEN,
    DEFAULT_SYSTEM_PROMPT,
    TRANSCRIBE_PROMPT,
    WHISPER_LARGE_V3_ENCODER,
)
from aero.vllm.prompt import chat_template as aero_chat_template


class AeroVllmConfig(PretrainedConfig):
    model_type = "aero"
    sub_configs = {"text_config": AutoConfig, "audio_config": AutoConfig}

    def __init__(
        self,
        audio_config=None,
        text_config=None,
        audio_token_index: int = 151667,
        projector_stack: int = 1,
        projector_type: str = "linear",
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        kwargs.pop("auto_map", None)
        if isinstance(audio_config, dict):
            kind = audio_config.get("model_type", "qwen2_audio_encoder")
            audio_config = CONFIG_MAPPING[kind](**{**audio_config, "model_type": kind})
        self.audio_config = audio_config or CONFIG_MAPPING["qwen2_audio_encoder"](
            **WHISPER_LARGE_V3_ENCODER
        )
        if isinstance(text_config, dict):
            kind = text_config.get("model_type", "qwen2")
            text_config = CONFIG_MAPPING[kind](**{**text_config, "model_type": kind})
        self.text_config = text_config or CONFIG_MAPPING["qwen2"]()
        self.audio_token_index = audio_token_index
        self.projector_stack = projector_stack
        self.projector_type = projector_type
        # vLLM copies this flag into the LM's config; aero's LM ties when either config says so
        # (aero-mini: only SmolLM2's text_config does).
        tie_word_embeddings = tie_word_embeddings or self.text_config.tie_word_embeddings
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class AeroProcessor(ProcessorMixin):
    """Tokenizer + Whisper feature extractor + aero's processor settings, for vLLM."""

    def __init__(
        self,
        feature_extractor=None,
        tokenizer=None,
        chat_template: str | None = None,  # a checkpoint's own jinja: replaced, see above
        audio_token: str = AUDIO_TOKEN,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        audio_stack: int = 1,  # the model config's projector_stack is what vLLM uses
        transcribe_prompt: str = TRANSCRIBE_PROMPT,
        **unused,  # remote-code pointers (`auto_map`), `processor_class`
    ):
        self.audio_token = audio_token
        self.system_prompt = system_prompt
        self.audio_stack = int(audio_stack)
        self.transcribe_prompt = transcribe_prompt
        template = aero_chat_template(system_prompt)
        super().__init__(feature_extractor, tokenizer, chat_template=template)
        self.audio_token_id = tokenizer.convert_tokens_to_ids(audio_token)


def register_config() -> None:
    """Make transformers' Auto classes resolve `model_type: "aero"` (safe to call again)."""
    AutoConfig.register("aero", AeroVllmConfig, exist_ok=True)
    AutoProcessor.register(AeroVllmConfig, AeroProcessor, exist_ok=True)
