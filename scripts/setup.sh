#!/usr/bin/env bash
# Create .venv and install aero with its test dependencies (CPU build of PyTorch).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# The CPU wheel of torch 2.13.0: an unpinned `torch` may pull a multi-GB CUDA build.
pip install -q "torch==2.13.0"
pip install -q -e ".[dev]"
