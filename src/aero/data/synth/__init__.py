"""Synthetic training and held-out data for aero-mini: espeak-ng and festival speech, sox effects.

`synthesize(out, load_recipe("train"), seed=0, workers=2)` writes OUT/audio/*.flac (16 kHz mono)
and OUT/<split>.jsonl manifests in the reference message format. See pipeline.py for the
flow, voices.py for the held-out voices, text.py for the sentence split, tasks.py for labels.

Names are loaded lazily so worker processes, which only need render.py, start without
importing torch and transformers.
"""

from importlib import import_module

_EXPORTS = {
    "synthesize": "pipeline",
    "plan_split": "pipeline",
    "load_recipe": "recipes",
    "Recipe": "recipes",
    "Split": "recipes",
    "RECIPES": "recipes",
    "RecipeError": "recipes",
    "ToolMissing": "tools",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"aero.data.synth.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
