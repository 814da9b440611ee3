"""Joint CTC/LM decoding: the connector's CTC prefix score beside the LM's next-token scores.

A "ctc" connector is trained to emit the transcript's own SmolLM2 tokens with CTC. When the LM
transcribes, each step's candidates (the LM's most likely tokens and the end of turn) are also
scored by how likely the recording's CTC posteriors make the reply so far followed by that
candidate: the CTC prefix probability (Watanabe et al. 2017, ESPnet's hybrid CTC/attention
decoding). The step takes the best weighted sum, so a token the frames do not hold (an insertion,
an echo of the prompt) and an end of turn before the audio is used up both lose.

The prefix recursion over frames is a first-order linear recurrence, so it is computed for all
frames at once with cumulative log-sum-exps (float64) rather than a loop over frames: one step
over a 5-minute recording (3,750 frames) and ten candidates is a few small tensor operations.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

NEG_INF = float("-inf")
CANDIDATES = 10  # the LM's most likely tokens scored by CTC at each step (ESPnet's pre-beam)
# ... and the next tokens the frames themselves say after where the reply's last token starts
CTC_CANDIDATES, LOOKAHEAD_FRAMES = 2, 25


class CtcPosteriors:
    """One recording's CTC log-posteriors over the LM's tokens and a blank, kept as its frame
    vectors: a token's column is computed when a hypothesis asks for it (T x H floats, not
    T x vocabulary).

    `frames` (T, H) are the connector's outputs; a token's logit is `scale * frame . embedding`
    (only the tokens of `emittable` have one); `log_norm` (T,) is each frame's log-partition over
    the emittable tokens and the blank, `blank` (T,) the blank's log-probability; `best` (T,)
    each frame's most likely token (-1: the blank).
    """

    def __init__(
        self,
        frames: torch.Tensor,
        embeddings: torch.Tensor,
        emittable: torch.Tensor,
        scale: float,
        log_norm: torch.Tensor,
        blank: torch.Tensor,
        best: torch.Tensor,
    ):
        self.frames, self.embeddings, self.emittable = frames.float(), embeddings, emittable
        self.scale, self.log_norm, self.blank = scale, log_norm.double(), blank.double()
        self.best = best

    @property
    def length(self) -> int:
        return self.frames.shape[0]

    @classmethod
    def cat(cls, parts: Sequence[CtcPosteriors]) -> CtcPosteriors:
        """The windows of one recording, in order, as one sequence of frames."""
        first = parts[0]
        return cls(
            torch.cat([p.frames for p in parts]),
            first.embeddings,
            first.emittable,
            first.scale,
            torch.cat([p.log_norm for p in parts]),
            torch.cat([p.blank for p in parts]),
            torch.cat([p.best for p in parts]),
        )

    def said_after(self, frame: int, last: int | None, count: int) -> list[int]:
        """The first `count` distinct tokens the frames say after `frame` (where the reply's last
        token `last` starts; its own run is skipped), within LOOKAHEAD_FRAMES."""
        ahead = self.best[frame + 1 : frame + 1 + LOOKAHEAD_FRAMES].tolist()
        k = 0
        while k < len(ahead) and last is not None and ahead[k] == last:
            k += 1
        out: list[int] = []
        for token in ahead[k:]:
            if token >= 0 and token not in out:
                out.append(token)
                if len(out) == count:
                    break
        return out

    def columns(self, tokens: Sequence[int]) -> torch.Tensor:
        """(T, K) float64 log-probabilities of `tokens` at every frame (-inf: not emittable)."""
        ids = torch.tensor(tokens, device=self.frames.device)
        known = ids < min(self.embeddings.shape[0], self.emittable.shape[0])
        ids = ids.where(known, 0)  # a token past the head's table (an added special token)
        table = self.embeddings[ids].to(self.frames.dtype)
        out = (self.scale * (self.frames @ table.T)).double() - self.log_norm[:, None]
        ok = self.emittable[ids] & known
        return out.masked_fill(~ok[None], NEG_INF)


@dataclass(frozen=True)
class PrefixState:
    """CTC forward variables of one reply prefix: the log-probability that frames 0..t give the
    prefix and end in its last token (`nonblank`) or in a blank (`blank`), and the prefix's own
    log-probability (`score`: any continuation)."""

    nonblank: torch.Tensor  # (T,)
    blank: torch.Tensor  # (T,)
    last: int | None  # the prefix's last token (None: the empty prefix)
    score: float
    start: int = -1  # the frame where the last token most likely starts (-1: none yet)


def _shifted(values: torch.Tensor, first: float) -> torch.Tensor:
    """(T, K) -> (T, K): row t holds row t-1 of `values`; row 0 is `first`."""
    return torch.cat([values.new_full((1, values.shape[1]), first), values[:-1]])


class CtcPrefixScorer:
    """CTC prefix scores of replies to one recording (see the module docstring)."""

    def __init__(self, posteriors: CtcPosteriors):
        self.posteriors = posteriors
        self.blank_cumsum = torch.cumsum(posteriors.blank, 0)  # (T,)

    def initial(self) -> PrefixState:
        T = self.posteriors.length
        nonblank = torch.full((T,), NEG_INF, dtype=torch.float64, device=self.blank_cumsum.device)
        return PrefixState(nonblank, self.blank_cumsum.clone(), None, 0.0)

    def end_score(self, state: PrefixState) -> float:
        """Log-probability that the whole recording gives exactly this prefix (the reply ends)."""
        if self.posteriors.length == 0:
            return 0.0 if state.last is None else NEG_INF
        return float(torch.logaddexp(state.nonblank[-1], state.blank[-1]))

    def extend(self, state: PrefixState, tokens: Sequence[int]) -> list[PrefixState]:
        """The states of the prefix followed by each token; a state's `score` is the extended
        prefix's log-probability (-inf for a token the head cannot emit)."""
        if self.posteriors.length == 0 or not tokens:
            return [
                PrefixState(state.nonblank, state.blank, t, NEG_INF, state.start) for t in tokens
            ]
        x = self.posteriors.columns(tokens)  # (T, K)
        # phi[t]: the prefix is complete by frame t and the next frame may start the new token
        # (after a repeated token only through a blank)
        either = torch.logaddexp(state.nonblank, state.blank)[:, None].expand_as(x)
        same = torch.tensor([t == state.last for t in tokens], device=x.device)
        phi = torch.where(same[None], state.blank[:, None].expand_as(x), either)
        start = 0.0 if state.last is None else NEG_INF  # the empty prefix holds before frame 0
        # nonblank[t] = x[t] + logaddexp(nonblank[t-1], phi[t-1]): with L the running sum of x,
        # nonblank[t] = L[t] + logcumsumexp over s <= t of (phi[s-1] - L[s-1])
        L = torch.cumsum(x, 0)
        entries = _shifted(phi, start) - _shifted(L, 0.0)  # phi[t-1] - L[t-1]
        entries = entries.nan_to_num(nan=NEG_INF)  # -inf - -inf: a token never emitted
        nonblank = L + torch.logcumsumexp(entries, 0)
        starts = entries + L  # log-probability that the new token starts at each frame
        score = torch.logsumexp(starts, 0)
        where = starts.argmax(0).tolist()
        # blank[t] = b[t] + logaddexp(nonblank[t-1], blank[t-1]), blank[0] = -inf
        B = self.blank_cumsum[:, None]
        into = _shifted(nonblank, NEG_INF) - _shifted(B.expand_as(x), 0.0)
        blank = B + torch.logcumsumexp(into.nan_to_num(nan=NEG_INF), 0)
        nonblank, blank = nonblank.nan_to_num(nan=NEG_INF), blank.nan_to_num(nan=NEG_INF)
        return [
            PrefixState(nonblank[:, k], blank[:, k], t, float(score[k]), where[k])
            for k, t in enumerate(tokens)
        ]


def joint_step(
    logprobs: torch.Tensor,
    scorer: CtcPrefixScorer,
    state: PrefixState,
    eos_ids: Collection[int],
    weight: float,
    candidates: int = CANDIDATES,
) -> tuple[torch.Tensor, dict[int, PrefixState]]:
    """One row's next-token scores under joint decoding: (V,) LM log-probabilities ->
    (V,) `(1 - weight) * LM + weight * (CTC prefix score - the prefix's)` over the LM's
    `candidates` best tokens, the next tokens the frames say after the reply's last one, and
    the end-of-turn tokens (-inf elsewhere), and the CTC state of each scored token. A row whose
    candidates CTC rules out entirely keeps the LM's scores."""
    if weight == 0:
        return logprobs, {}
    top = logprobs.topk(min(candidates, logprobs.shape[0])).indices.tolist()
    said = scorer.posteriors.said_after(state.start, state.last, CTC_CANDIDATES)
    tokens = list(dict.fromkeys(t for t in top + said if t not in eos_ids))
    ends = [t for t in eos_ids if 0 <= t < logprobs.shape[0]]
    states = scorer.extend(state, tokens)
    ctc = torch.full_like(logprobs, NEG_INF)
    ctc[tokens] = torch.tensor([s.score for s in states], dtype=logprobs.dtype) - state.score
    ctc[ends] = scorer.end_score(state) - state.score
    if not bool(torch.isfinite(ctc).any()):
        return logprobs, {}
    scores = torch.full_like(logprobs, NEG_INF)
    chosen = tokens + ends
    scores[chosen] = (1 - weight) * logprobs[chosen] + weight * ctc[chosen]
    return scores, dict(zip(tokens, states))
