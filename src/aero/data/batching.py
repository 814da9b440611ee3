"""Batch plans: fixed-size, token-budget (dynamic batch size) and packed bins.

Notable choices:
- A plan is a deterministic function of (lengths, mode, seed, epoch): resuming only needs
  (epoch, position), never the data order itself.
- Token budget: samples are shuffled, then sorted by length inside windows of 100 batches'
  worth, and cut greedily so `batch_size x longest <= budget` (the padded cost).
- Packing: first-fit-decreasing bins of `sum(lengths) <= pack_length` (within 11/9 OPT+1 of
  the fewest bins); bins are then shuffled. A sample longer than the bin gets a bin of its
  own: it is never cut.
- Distributed: each rank takes every world_size-th batch; the few batches that do not fill
  a round are carried to the next epoch's end (reported in `leftover`), so ranks stay in step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def expand_mixture(sizes: list[int], weights: list[float], seed: int, epoch: int) -> list[int]:
    """Global sample indices of one epoch: dataset d appears `weights[d]` times over (fractions
    take a seeded random subset). Datasets are laid out one after another in global indices."""
    rng = random.Random(f"{seed}-mixture-{epoch}")
    out, offset = [], 0
    for size, weight in zip(sizes, weights):
        if weight < 0:
            raise ValueError(f"Dataset weights must be >= 0, got {weight}.")
        whole, frac = int(weight), weight - int(weight)
        ids = list(range(offset, offset + size))
        out += ids * whole + rng.sample(ids, round(frac * size))
        offset += size
    return out


def fixed_batches(indices: list[int], batch_size: int) -> list[list[int]]:
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def budget_batches(
    indices: list[int], lengths: list[int], budget: int, rng: random.Random
) -> list[list[int]]:
    """Dynamic batch size: longest x count <= budget, similar lengths together."""
    indices = indices[:]
    rng.shuffle(indices)
    mean = max(1, sum(lengths[i] for i in indices) // max(1, len(indices)))
    window = max(1, 100 * budget // mean)
    batches: list[list[int]] = []
    for start in range(0, len(indices), window):
        chunk = sorted(indices[start : start + window], key=lambda i: lengths[i])
        batch: list[int] = []
        longest = 0
        for i in chunk:
            longer = max(longest, lengths[i])
            if batch and longer * (len(batch) + 1) > budget:
                batches.append(batch)
                batch, longer = [], lengths[i]
            batch.append(i)
            longest = longer
        if batch:
            batches.append(batch)
    rng.shuffle(batches)
    return batches


def pack_batches(
    indices: list[int], lengths: list[int], pack_length: int, rng: random.Random
) -> list[list[int]]:
    """First-fit-decreasing bins with sum(lengths) <= pack_length."""
    order = sorted(indices, key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for b, free in enumerate(room):  # first fit; bins are few (<< samples) so this is cheap
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(pack_length - n)
    rng.shuffle(bins)
    return bins


@dataclass
class BatchPlan:
    """Batches of every epoch, for one rank; iteration resumes from (epoch, position)."""

    lengths: list[int | None]
    mode: str  # "fixed" | "budget" | "pack"
    size: int  # batch_size (fixed), token budget (budget) or pack length (pack)
    dataset_sizes: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    seed: int = 0
    shuffle: bool = True
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    position: int = 0  # batches of this epoch already consumed by this rank

    def __post_init__(self):
        if self.mode not in ("fixed", "budget", "pack"):
            raise ValueError(f"batching must be 'fixed', 'budget' or 'pack', not {self.mode!r}.")
        if self.size <= 0:
            raise ValueError(
                f"The batch size / token budget / pack length must be positive, got {self.size}."
            )
        if not self.dataset_sizes:
            self.dataset_sizes = [len(self.lengths)]
        if not self.weights:
            self.weights = [1.0] * len(self.dataset_sizes)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of `epoch` (every rank's), unreadable samples (length None) left out."""
        indices = expand_mixture(self.dataset_sizes, self.weights, self.seed, epoch)
        indices = [i for i in indices if self.lengths[i] is not None]
        rng = random.Random(f"{self.seed}-batches-{epoch}")
        lengths = [n or 0 for n in self.lengths]
        if self.mode == "fixed":
            if self.shuffle:
                rng.shuffle(indices)
            return fixed_batches(indices, self.size)
        if self.mode == "budget":
            return budget_batches(indices, lengths, self.size, rng)
        return pack_batches(indices, lengths, self.size, rng)

    def rank_batches(self, epoch: int) -> list[list[int]]:
        batches = self.epoch_batches(epoch)
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank : usable : self.world_size]

    def leftover(self, epoch: int) -> int:
        """Batches of `epoch` that no rank runs (fewer than world_size at the end)."""
        return len(self.epoch_batches(epoch)) % self.world_size

    def __iter__(self):
        while True:
            batches = self.rank_batches(self.epoch)
            if not batches:
                raise ValueError(
                    "The data gives no batch: every sample is unreadable or the manifest is empty."
                )
            while self.position < len(batches):
                batch = batches[self.position]
                self.position += 1
                yield batch
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
