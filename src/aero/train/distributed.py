"""One process or many under `torchrun`: ranks, the device, sums across ranks, and FSDP2 sharding.

gloo on CPU, NCCL on GPU; a single process (no WORLD_SIZE) needs no process group at all.
"""

from __future__ import annotations

import os

import torch

from aero.train.step import TrainingModule


def training_device() -> torch.device:
    """This process's GPU (its `LOCAL_RANK`'s under torchrun) when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


class Distributed:
    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1
        self.device = training_device()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.enabled and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor(
            [value],
            dtype=torch.float64,
            device=self.device if self.device.type == "cuda" else "cpu",
        )
        torch.distributed.all_reduce(t)
        return float(t.item())

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            # every rank waits for the others (rank 0 may still be writing the export): a rank
            # that tore gloo down while its peer still used it aborted ("terminate called
            # without an active exception") once in CI on a loaded machine
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def shard(module: TrainingModule) -> None:
    """FSDP2: every encoder and decoder layer is its own unit, the rest lives in the root."""
    from torch.distributed.fsdp import fully_shard

    for layer in module.model.audio_tower.layers:
        fully_shard(layer)
    for layer in module.model.language_model.get_decoder().layers:
        fully_shard(layer)
    fully_shard(module)
