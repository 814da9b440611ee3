"""Batch plans: budgets, packing bins, mixtures, resume positions, ranks."""

import random

import pytest

from aero.data.batching import BatchPlan, budget_batches, expand_mixture, pack_batches


def long_tailed(n=400, seed=0):
    rng = random.Random(seed)
    return [
        rng.randint(60, 520) if rng.random() < 0.9 else rng.randint(800, 7600) for _ in range(n)
    ]


def test_pack_bins_hold_every_sample_once_under_the_length():
    lengths = long_tailed()
    bins = pack_batches(list(range(len(lengths))), lengths, 8192, random.Random(0))
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 8192 for b in bins)
    fill = sum(lengths) / (len(bins) * 8192)
    assert fill > 0.95  # first-fit-decreasing leaves little room unused


def test_oversized_sample_gets_its_own_bin_not_cut():
    bins = pack_batches([0, 1, 2], [100, 9000, 50], 1000, random.Random(0))
    assert [1] in bins and sorted(i for b in bins for i in b) == [0, 1, 2]


def test_budget_batches_respect_padded_budget():
    lengths = long_tailed()
    batches = budget_batches(list(range(len(lengths))), lengths, 4096, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 4096
    assert max(len(b) for b in batches) > 4 * min(
        len(b) for b in batches
    )  # the batch size really varies


def test_mixture_weights_are_repetition_factors():
    ids = expand_mixture([10, 20], [2.0, 0.5], seed=1, epoch=0)
    assert sum(1 for i in ids if i < 10) == 20 and sum(1 for i in ids if i >= 10) == 10
    assert len(set(i for i in ids if i >= 10)) == 10  # half of the second dataset, no repeats
    assert expand_mixture([10, 20], [2.0, 0.5], 1, 0) == ids
    assert expand_mixture([10, 20], [2.0, 0.5], 1, 1) != ids  # another epoch, another half


def test_unreadable_samples_are_left_out_of_plans():
    plan = BatchPlan([10, None, 30, 40], "fixed", 2, shuffle=False)
    assert sum(plan.epoch_batches(0), []) == [0, 2, 3]


@pytest.mark.parametrize("mode,size", [("fixed", 8), ("budget", 2048), ("pack", 4096)])
def test_resume_position_continues_the_same_sequence(mode, size):
    lengths = long_tailed(120)
    plan = BatchPlan(lengths, mode, size, seed=3)
    it = iter(plan)
    first = [next(it) for _ in range(40)]  # crosses into the next epoch
    resumed = BatchPlan(lengths, mode, size, seed=3)
    it2 = iter(resumed)
    for _ in range(25):
        next(it2)
    assert [next(it2) for _ in range(15)] == first[25:]


def test_ranks_get_disjoint_equal_shares():
    lengths = long_tailed(100)
    plans = [BatchPlan(lengths, "pack", 2048, seed=0, rank=r, world_size=2) for r in range(2)]
    a, b = (p.rank_batches(0) for p in plans)
    assert len(a) == len(b)
    assert not set(sum(a, [])) & set(sum(b, []))
    assert (
        len(sum(a, []))
        + len(sum(b, []))
        + sum(len(x) for x in plans[0].epoch_batches(0)[len(a) * 2 :])
        == 100
    )
