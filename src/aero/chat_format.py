"""The chat format aero's models are trained and prompted with: the audio placeholder, the
default system and transcription prompts and the reference chat template.

Kept free of torch and transformers, so that every environment aero runs in (its own, and the
vLLM one, which pins an older transformers) reads the same definitions.
"""

AUDIO_TOKEN = "<|AUDIO|>"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
TRANSCRIBE_PROMPT = "Please transcribe the audio"

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
