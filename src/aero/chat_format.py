"""The chat format aero's models are trained and prompted with: the audio placeholder, the
default system and transcription prompts and the reference chat template; and the published
checkpoint's encoder shape (the default `audio_config`).

Kept free of torch and transformers, so that every environment aero runs in (its own, and the
vLLM one, which pins an older transformers) reads the same definitions.
"""

AUDIO_TOKEN = "<|AUDIO|>"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
TRANSCRIBE_PROMPT = "Please transcribe the audio"

WHISPER_LARGE_V3_ENCODER = {
    "d_model": 1280,
    "encoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "encoder_layers": 32,
    "num_mel_bins": 128,
    "max_source_positions": 1500,
    "scale_embedding": False,
    "activation_function": "gelu",
}

# The reference chat format as a jinja template, saved beside checkpoints for other tools.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' and default_system %}"
    "<|im_start|>system\n{{ default_system }}<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('audio', 'audio_url', 'input_audio') %}<|AUDIO|>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
