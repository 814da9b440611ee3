"""Packing: a packed batch's loss equals the per-sample losses; no attention across samples."""

import pytest
import torch

from aero.data.collate import Collator, TrainDataset
from aero.data.manifest import DatasetSpec, read_dataset
from aero.train.loss import fused_linear_cross_entropy
from aero.train.step import TrainingModule
from conftest import make_tiny_model, make_tiny_processor, write_manifest


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    manifest = write_manifest(root, [1.2, 3.5, 0.7, 2.2])
    processor = make_tiny_processor()
    dataset = TrainDataset(read_dataset(DatasetSpec(str(manifest))), processor)
    return make_tiny_model(), processor, dataset


@pytest.mark.parametrize(
    "reduction,attention", [("token", "sdpa"), ("sample", "sdpa"), ("token", "packed")]
)
def test_packed_loss_equals_per_sample_losses_with_audio(setup, reduction, attention):
    model, processor, dataset = setup
    from aero.train.packed_attention import register

    model.language_model.set_attn_implementation(register() if attention == "packed" else "sdpa")
    step = TrainingModule(model, loss_reduction=reduction)
    items = [dataset[i] for i in range(len(dataset))]
    packed = Collator(processor, packed=True)(items)
    total, count = step(packed)
    singles = [step(Collator(processor, packed=True)([it])) for it in items]
    if reduction == "token":
        # The packed mean over tokens = token-weighted mean of the per-sample means.
        expected = sum(s for s, _ in singles) / sum(n for _, n in singles)
    else:
        expected = sum(s / n for s, n in singles) / len(singles)  # mean of per-sample losses
        assert count == len(items)
    torch.testing.assert_close(total / count, expected, rtol=1e-5, atol=1e-6)
    # Padded rows give the same loss too.
    padded_total, padded_count = step(Collator(processor, packed=False)(items))
    torch.testing.assert_close(padded_total / padded_count, expected, rtol=1e-5, atol=1e-6)


def test_packed_lm_only_never_attends_across_samples(setup):
    """Text-only: hidden states of each sample inside a pack equal those computed alone, and
    changing one sample leaves the others' hidden states untouched."""
    model, _, _ = setup
    decoder = model.language_model.get_decoder()
    torch.manual_seed(0)
    seqs = [torch.randint(0, 400, (n,)) for n in (5, 9, 3)]

    def packed_hidden(seqs):
        ids = torch.cat(seqs)[None]
        pos = torch.cat([torch.arange(len(s)) for s in seqs])[None]
        return decoder(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state[0]

    hidden = packed_hidden(seqs)
    start = 0
    for s in seqs:
        alone = decoder(input_ids=s[None], use_cache=False).last_hidden_state[0]
        torch.testing.assert_close(hidden[start : start + len(s)], alone, rtol=1e-5, atol=1e-5)
        start += len(s)
    changed = [seqs[0], torch.randint(0, 400, (9,)), seqs[2]]
    other = packed_hidden(changed)
    torch.testing.assert_close(other[14:], hidden[14:])  # the third sample cannot see the second
    assert not torch.allclose(other[5:14], hidden[5:14])


def test_fused_loss_matches_full_logits_and_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(2, 37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (2, 37))
    targets[0, :10] = -100
    losses, keep = fused_linear_cross_entropy(hidden, weight, targets, chunk=8)
    losses.sum().backward()
    g_h, g_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    full = torch.nn.functional.cross_entropy(
        (hidden @ weight.T).reshape(-1, 50), targets.reshape(-1), reduction="sum"
    )
    full.backward()
    torch.testing.assert_close(losses.sum(), full)
    torch.testing.assert_close(g_h, hidden.grad)
    torch.testing.assert_close(g_w, weight.grad)
    assert keep.sum() == 64


def test_per_sample_attention_equals_block_mask(setup):
    from aero.train.packed_attention import register, varlen_kwargs

    model, _, _ = setup
    decoder = model.language_model.get_decoder()
    torch.manual_seed(1)
    lens = [7, 12, 3, 9]
    ids = torch.randint(0, 400, (1, sum(lens)))
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    model.language_model.set_attn_implementation("sdpa")
    block = decoder(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
    model.language_model.set_attn_implementation(register())
    looped = decoder(
        input_ids=ids, position_ids=pos, use_cache=False, **varlen_kwargs(lens, "cpu")
    ).last_hidden_state
    # Without varlen kwargs it is plain SDPA (generation, padded batches).
    plain = decoder(input_ids=ids[:, :7], use_cache=False).last_hidden_state
    model.language_model.set_attn_implementation("sdpa")
    torch.testing.assert_close(looped, block, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain, block[:, :7], rtol=1e-5, atol=1e-5)
