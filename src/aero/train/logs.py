"""What a training run writes as it goes: JSONL records (metrics, skipped samples), and TensorBoard
scalars when it is installed. Only the main rank writes; every write opens and closes its file, so
a killed run leaves complete lines."""

from __future__ import annotations

import json
from pathlib import Path


def due(step: int, every: int, last: int) -> bool:
    """Whether a periodic action (save, check, log) runs at `step`: every `every` steps and at the
    last one."""
    return step % every == 0 or step == last


class JsonlLog:
    """Records appended to a JSONL file (only on the main rank), each write opened and closed."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = path, enabled

    def write(self, records: list[dict]) -> None:
        if self.enabled and records:
            with open(self.path, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)


class MetricsLog:
    """`metrics.jsonl`, one line per logged step, mirrored to TensorBoard when it is installed."""

    def __init__(self, output_dir: Path, enabled: bool):
        self.jsonl = JsonlLog(output_dir / "metrics.jsonl", enabled)
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(output_dir / "tensorboard"))
            except Exception:  # tensorboard not installed: the JSONL log is enough
                self.tb = None

    def write(self, record: dict) -> None:
        self.jsonl.write([record])
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
