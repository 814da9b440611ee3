"""The one training entry point: set up the run, then hand it to the chosen objective.

`objective: lm` trains through the LM (`aero.train.loop`); `objective: ctc` trains the
projector alone with a CTC loss onto the LM's embeddings (`aero.train.align`). Both share the
run folder, the config record, the seed and the model loading done here.
"""

from __future__ import annotations

import json
from pathlib import Path

from aero.train.config import ConfigError, TrainConfig, to_dict
from aero.train.distributed import Distributed
from aero.train.loop import load_base, seed_everything, train_lm
from aero.train.presets import apply_preset, continue_from_adapter


def train(config: TrainConfig, stop_after: int | None = None) -> dict:
    """Run (or resume) training; returns a summary. `stop_after` ends the run after that
    many steps of this call without exporting (a stand-in for a crash, used by tests)."""
    config.validate()
    if config.init_adapter and not Path(config.init_adapter).exists():
        raise ConfigError(
            f"init_adapter {config.init_adapter} does not exist "
            "(run the stage that writes it first)."
        )
    dist = Distributed()
    out = Path(config.output_dir)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(to_dict(config), indent=2, default=str))
    seed_everything(config.seed)

    model, processor = load_base(config)
    if config.objective == "ctc":
        from aero.train.align import train_ctc

        if config.init_adapter:  # the stage exports the projector only: refuse anything else
            continue_from_adapter(
                apply_preset(model, "projector"), config.init_adapter, "projector", None
            )
        if dist.enabled:
            raise ValueError(
                "The ctc alignment stage runs in one process; start it without torchrun."
            )
        return train_ctc(config, model, processor, out, stop_after)
    return train_lm(config, model, processor, out, dist, stop_after)
