"""Joint CTC/LM decoding: the CTC prefix scorer against every alignment of a tiny recording, the
end score against torch's CTC loss, and the step's choices."""

import itertools
import math

import pytest
import torch

from aero.ctc_scoring import CtcPosteriors, CtcPrefixScorer, joint_step

V = 3  # tokens 0..2, the blank is class V


def posteriors(logits: torch.Tensor, emittable=None) -> CtcPosteriors:
    """(T, V + 1) logits (blank last) as CtcPosteriors: one-hot embeddings, scale 1."""
    log_norm = logits.logsumexp(-1)
    if emittable is None:
        emittable = torch.ones(V, dtype=torch.bool)
    embeddings = torch.eye(V, V + 1)
    best = logits.argmax(-1)
    best = torch.where(best == V, -1, best)
    return CtcPosteriors(
        logits, embeddings, emittable, 1.0, log_norm, logits[:, V] - log_norm, best
    )


def collapse(path) -> tuple[int, ...]:
    out, previous = [], None
    for c in path:
        if c != previous and c != V:
            out.append(c)
        previous = c
    return tuple(out)


def brute(logits: torch.Tensor, prefix: tuple[int, ...], whole: bool) -> float:
    """log P(the collapsed path starts with / equals `prefix`), over every path of the frames."""
    logp = logits.double().log_softmax(-1)
    total = []
    for path in itertools.product(range(V + 1), repeat=logits.shape[0]):
        out = collapse(path)
        if out == prefix if whole else out[: len(prefix)] == prefix:
            total.append(sum(float(logp[t, c]) for t, c in enumerate(path)))
    return (
        float(torch.logsumexp(torch.tensor(total, dtype=torch.float64), 0)) if total else -math.inf
    )


def walk(scorer: CtcPrefixScorer, prefix: tuple[int, ...]):
    state = scorer.initial()
    for token in prefix:
        state = scorer.extend(state, [token])[0]
    return state


@pytest.mark.parametrize("prefix", [(0,), (1, 2), (2, 2), (0, 1, 0), (1, 1, 1)])
def test_prefix_and_end_scores_match_every_alignment(prefix):
    torch.manual_seed(len(prefix))
    logits = torch.randn(5, V + 1) * 2
    scorer = CtcPrefixScorer(posteriors(logits))
    state = walk(scorer, prefix)
    assert state.score == pytest.approx(brute(logits, prefix, whole=False), abs=1e-6)
    assert scorer.end_score(state) == pytest.approx(brute(logits, prefix, whole=True), abs=1e-6)
    assert scorer.end_score(scorer.initial()) == pytest.approx(brute(logits, (), whole=True))


def test_end_score_is_the_ctc_loss_on_a_long_recording():
    """3,000 frames (a 4-minute recording at 12.5 frames/s) stay exact (float64 sums)."""
    torch.manual_seed(0)
    T, target = 3000, [0, 1, 1, 2, 0] * 60
    logits = torch.randn(T, V + 1) * 3
    scorer = CtcPrefixScorer(posteriors(logits))
    state = walk(scorer, tuple(target))
    logp = logits.double().log_softmax(-1)
    # torch's blank is class 0: move ours there
    logp = torch.cat([logp[:, V:], logp[:, :V]], 1)
    loss = torch.nn.functional.ctc_loss(
        logp[:, None],
        torch.tensor(target)[None] + 1,
        torch.tensor([T]),
        torch.tensor([len(target)]),
        reduction="sum",
    )
    assert scorer.end_score(state) == pytest.approx(-float(loss), rel=1e-7)


def test_a_token_the_head_cannot_emit_scores_minus_infinity():
    logits = torch.randn(4, V + 1)
    scorer = CtcPrefixScorer(posteriors(logits, torch.tensor([True, False, True])))
    zero, one = scorer.extend(scorer.initial(), [0, 1])
    assert math.isfinite(zero.score) and one.score == -math.inf


def test_windows_join_into_one_recording():
    torch.manual_seed(1)
    logits = torch.randn(6, V + 1)
    whole = CtcPrefixScorer(posteriors(logits))
    joined = CtcPrefixScorer(CtcPosteriors.cat([posteriors(logits[:4]), posteriors(logits[4:])]))
    a, b = walk(whole, (1, 0)), walk(joined, (1, 0))
    assert a.score == pytest.approx(b.score) and whole.end_score(a) == pytest.approx(
        joined.end_score(b)
    )


def frames_saying(tokens: list[int], per_token: int = 3) -> torch.Tensor:
    """Logits whose frames clearly say `tokens` (each for a few frames, then a blank)."""
    rows = []
    for token in tokens:
        rows += [token] * per_token + [V]
    return torch.nn.functional.one_hot(torch.tensor(rows), V + 1).float() * 8


def test_joint_step_drops_an_insertion_and_an_early_end():
    eos = 9  # the LM's vocabulary is wider than the head's: tokens 3..9 are not emittable
    scorer = CtcPrefixScorer(posteriors(frames_saying([2, 0])))
    state = scorer.initial()
    # the LM prefers token 1 (not said), then the end of turn, then 2 (said first)
    lm = torch.full((10,), -20.0)
    lm[[1, eos, 2]] = torch.tensor([-0.1, -1.0, -3.0])
    lm = lm.log_softmax(-1)
    scores, children = joint_step(lm, scorer, state, {eos}, weight=0.5)
    assert int(scores.argmax()) == 2 and set(children) >= {1, 2}
    # with the whole recording said, the end of turn wins over another token
    state = walk(scorer, (2, 0))
    scores, _ = joint_step(lm, scorer, state, {eos}, weight=0.5)
    assert int(scores.argmax()) == eos
    # weight 0 is the LM alone
    scores, children = joint_step(lm, scorer, scorer.initial(), {eos}, weight=0.0)
    assert int(scores.argmax()) == 1 and children == {}


def test_the_frames_put_their_next_token_among_the_candidates():
    """When the LM's candidates miss what the audio says next, the frames' own next token is
    scored too (and wins on its CTC score)."""
    eos = 9
    scorer = CtcPrefixScorer(posteriors(frames_saying([2, 0, 1])))
    state = walk(scorer, (2,))
    assert state.start == 0 and scorer.posteriors.said_after(state.start, 2, 2) == [0, 1]
    lm = torch.full((10,), -5.0)
    lm[[3, 4, eos]] = torch.tensor([-0.1, -0.2, -0.3])  # not one of them is said
    scores, children = joint_step(lm.log_softmax(-1), scorer, state, {eos}, 0.5, candidates=3)
    assert int(scores.argmax()) == 0 and 0 in children
