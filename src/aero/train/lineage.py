"""Lineage: where an adapter's training came from, carried in its own metadata.

A model trained over several sessions (each continuing from the last one's adapter through
`init_adapter`) keeps one record per training leg in the adapter's `lineage` metadata entry (a
JSON list, oldest first): the run, its objective, steps, samples, audio hours and LM tokens seen,
and the data manifests with the recipe and seed that made them (from the `<split>.synth.json`
that `aero data synth` writes beside each manifest). Each leg's export appends to the lineage of
the adapter it started from, so the shipped file says how to replay its whole history.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

from aero.adapter import adapter_file, adapter_metadata

LINEAGE_KEY = "lineage"


def lineage_of(path) -> list[dict]:
    """The legs recorded in an adapter file (or a run's `final/`), oldest first."""
    return json.loads(adapter_metadata(adapter_file(path)).get(LINEAGE_KEY, "[]"))


def data_record(manifest: str, tasks: list[str] | None = None, weight: float = 1.0) -> dict:
    """A manifest path with the recipe and seed that made it, when synthesis recorded them, the
    tasks the leg kept of it (when it kept only some) and its mixture weight (when not 1)."""
    made = Path(manifest).with_suffix(".synth.json")
    record = {"manifest": str(manifest)}
    if made.is_file():
        record.update(json.loads(made.read_text()))
    if tasks is not None:
        record["tasks"] = list(tasks)
    if weight != 1.0:
        record["weight"] = weight
    return record


def leg(config, objective: str, **seen) -> dict:
    """One training leg: `seen` holds what it read (steps, samples, audio_hours, tokens); the
    leg's whole config is kept, so the leg can be run again."""
    from aero.train.config import to_dict

    settings = {k: v for k, v in to_dict(config).items() if k != "data"}
    return {
        "run": Path(config.output_dir).name,
        "objective": objective,
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in seen.items()},
        "seed": config.seed,
        "data": [data_record(spec.path, spec.tasks, spec.weight) for spec in config.data],
        "date": date.today().isoformat(),
        "config": settings,
    }


def lineage_metadata(config, this_leg: dict) -> dict:
    """Metadata entries for an export: the parent's lineage (if the run started from an adapter)
    plus this leg, and the projector the adapter was trained with."""
    parent = lineage_of(config.init_adapter) if config.init_adapter else []
    return {LINEAGE_KEY: json.dumps(parent + [this_leg])}


def projector_metadata(model_config) -> dict:
    """The projector settings `aero.models.projector_settings` reads back."""
    return {
        "projector_type": model_config.projector_type,
        "projector_stack": model_config.projector_stack,
        "connector_layers": model_config.connector_layers,
        "ctc_emissions": model_config.ctc_emissions,
    }
