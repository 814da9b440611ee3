"""Decoding: from prompts already through the language model to token ids, one step at a time.

This layer works on tensors and token ids only: no files, audio or text. The recording-level
driver (`aero.engine`: loading, the context budget, batching, streaming text, timestamps)
prepares the prompts and turns the ids into text, as Whisper keeps `decoding.py` apart from
`transcribe.py`.

Notable choices:
- Our own loop over the LM (not `generate()`): one token per step from the prompt's KV cache.
  Rows that finish leave the batch (their cache rows are dropped, so one long reply does not
  make seven short ones pay), and the repetition guard gives a result flag.
- The repetition guard stops a row whose last tokens are one n-gram repeated, and cuts the
  reply back to the loop's first copy ("repetition").
- Beam search as Whisper's decoder: the search ends once `num_beams` hypotheses have finished,
  and the best finished one by mean log-probability per token wins.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from aero.ctc_scoring import CtcPrefixScorer, PrefixState, joint_step

DEFAULT_MAX_NEW_TOKENS = 512  # reply budget of a chat (or evaluation) request given none
FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)  # Whisper's and faster-whisper's after greedy


@dataclass(frozen=True)
class GenerationOptions:
    """How to decode. The defaults are greedy transcription with the repetition guard on."""

    # Reply budget; None: 32 + 8/audio s for transcripts, 512 for chat (clamped to the context).
    max_new_tokens: int | None = None
    temperature: float = 0.0  # 0: greedy (argmax); > 0: sample from softmax(logits / temperature)
    # Nucleus sampling: sample among the most likely tokens holding this probability mass.
    top_p: float = 1.0
    seed: int | None = None  # sampling seed for reproducible samples (None: torch's global one)
    # Stop a row whose last tokens are one n-gram repeated (a degenerate loop).
    repetition_guard: bool = True
    # Longest repeated n-gram the guard looks for, in tokens (aero-mini's one-pass long-form
    # loops were whole sentences: 25-80 tokens).
    repetition_max_ngram: int = 128
    repetition_min_repeats: int = 4  # a loop is at least this many consecutive copies ...
    repetition_min_tokens: int = 32  # ... spanning this many tokens (one token repeats 32 times)
    # > 0: no n-gram of this many tokens occurs twice in a reply (as in transformers).
    no_repeat_ngram_size: int = 0
    # Whisper's temperature fallback, with the repetition guard as its trigger: a reply the guard
    # stopped is decoded again at each of these temperatures in turn (e.g. FALLBACK_TEMPERATURES),
    # and the first one that ends without a loop replaces it; one that loops at every temperature
    # keeps the first decode, cut at its loop. The samples are seeded (`seed`, or 0), so results
    # repeat.
    fallback_temperatures: tuple[float, ...] = ()
    # > 1: beam search (greedy, temperature 0), as Whisper's beam_size; not for streams.
    num_beams: int = 1
    # Joint CTC/LM decoding of transcripts (models with a "ctc" connector): each step's
    # candidates are scored (1 - w) * LM + w * the connector's CTC prefix score; 0: LM alone.
    ctc_weight: float = 0.5

    def __post_init__(self):
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}.")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be between 0 and 2, not {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}.")
        if self.repetition_max_ngram < 1 or self.repetition_min_repeats < 2:
            raise ValueError(
                "The repetition guard needs repetition_max_ngram >= 1 and "
                "repetition_min_repeats >= 2."
            )
        if self.no_repeat_ngram_size < 0:
            raise ValueError(
                "no_repeat_ngram_size must be 0 (off) or a positive n-gram size, "
                f"not {self.no_repeat_ngram_size}."
            )
        # frozen: lists come in from YAML/JSON
        object.__setattr__(self, "fallback_temperatures", tuple(self.fallback_temperatures))
        if any(not 0.0 < t <= 2.0 for t in self.fallback_temperatures):
            raise ValueError(
                f"fallback temperatures must be in (0, 2], not {self.fallback_temperatures}."
            )
        if self.num_beams < 1 or (
            self.num_beams > 1 and (self.temperature > 0 or self.no_repeat_ngram_size)
        ):
            raise ValueError(
                "num_beams must be 1, or > 1 with temperature 0 and no "
                f"no_repeat_ngram_size, not {self.num_beams}."
            )
        if not 0.0 <= self.ctc_weight < 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1), not {self.ctc_weight}.")
        if self.fallback_temperatures and not self.repetition_guard:
            raise ValueError(
                "fallback_temperatures needs the repetition guard on: the guard is "
                "what triggers a fallback."
            )


# ----- the repetition guard ------------------------------------------------------------------


@dataclass(frozen=True)
class LoopTokens:
    """What the repetition guard counts as the same: every numeral token is one class, so a loop
    whose numbers change ("... in 1902. ... in 1903.") is a loop too, unless its repeated n-gram
    is only numerals and separators (someone counting aloud). From the tokenizer:
    `LoopTokens.of(tokenizer)`."""

    numerals: frozenset[int] = frozenset()
    separators: frozenset[int] = frozenset()  # whitespace and punctuation tokens

    @classmethod
    def of(cls, tokenizer) -> LoopTokens:
        numerals, separators = set(), set()
        for token, i in tokenizer.get_vocab().items():
            text = tokenizer.convert_tokens_to_string([token])
            if text.strip().isdigit():
                numerals.add(i)
            elif text and all(not c.isalnum() for c in text):
                separators.add(i)
        return cls(frozenset(numerals), frozenset(separators))

    def canonical(self, tokens: Sequence[int]) -> list[int]:
        return [-1 if t in self.numerals else t for t in tokens]

    def counting(self, ngram: Sequence[int]) -> bool:
        """Whether a canonical n-gram is only numerals and separators."""
        return all(t == -1 or t in self.separators for t in ngram)


def repeated_ngram(
    tokens: Sequence[int], options: GenerationOptions, same: LoopTokens | None = None
) -> int:
    """n if the tokens end with one n-gram repeated as a loop (see GenerationOptions), else 0;
    with `same`, numerals match one another (see LoopTokens)."""
    longest = options.repetition_max_ngram * options.repetition_min_repeats
    longest += options.repetition_min_tokens
    raw = list(tokens[-longest:])
    canonical = same.canonical(raw) if same is not None and same.numerals else None
    for n in range(1, options.repetition_max_ngram + 1):
        copies = max(options.repetition_min_repeats, math.ceil(options.repetition_min_tokens / n))
        span = n * copies
        if len(raw) < span:
            break
        tail = raw[-span:]
        if tail[:-n] == tail[n:]:  # period n over the whole span
            return n
        if canonical is not None:
            tail = canonical[-span:]
            if tail[:-n] == tail[n:] and not same.counting(tail[-n:]):
                return n
    return 0


def loop_start(tokens: Sequence[int], n: int, same: LoopTokens | None = None) -> int:
    """Index just after the first copy of the repeated n-gram that ends `tokens`."""
    if same is not None and same.numerals:
        tokens = same.canonical(tokens)
    i = len(tokens) - n
    while i - n >= 0 and tokens[i - n : i] == tokens[i : i + n]:
        i -= n
    return i + n


class NgramBan:
    """no_repeat_ngram_size for one row, kept incrementally: the next tokens that would complete
    an n-gram already in the reply (a dict from each (n-1)-gram to the tokens that followed it)."""

    def __init__(self, n: int):
        self.n, self.follow = n, {}

    def add(self, tokens: Sequence[int]) -> None:
        if len(tokens) >= self.n:
            key = tuple(tokens[len(tokens) - self.n : -1])
            self.follow.setdefault(key, []).append(tokens[-1])

    def banned(self, tokens: Sequence[int]) -> list[int]:
        if len(tokens) < self.n - 1:
            return []
        return self.follow.get(tuple(tokens[len(tokens) - self.n + 1 :]), [])


# ----- decoding --------------------------------------------------------------------------------


class Prefill(NamedTuple):
    """Prompts (left padded) through the LM: what decoding continues from."""

    output: Any  # the LM's output; `output.logits[:, -1]` scores each row's first new token
    cache: Any  # the KV cache (a transformers DynamicCache), one row per prompt
    attention_mask: torch.Tensor  # (rows, prompt length)
    positions: torch.Tensor  # (rows, prompt length) position ids, counting real tokens only
    # per row, the CTC prefix scorer of a transcription by a "ctc" connector (joint decoding)
    ctc: Sequence[CtcPrefixScorer | None] = ()


@dataclass
class Decoded:
    """One row's reply as ids: end of turn left out, a loop cut back to its first copy."""

    token_ids: list[int]
    finish_reason: str  # "stop" (end of turn), "length" (max_new_tokens), "repetition" (guard)


def _decoded(
    ids: list[int], reason: str, options: GenerationOptions, same: LoopTokens | None = None
) -> Decoded:
    if reason == "repetition":
        ids = ids[: loop_start(ids, repeated_ngram(ids, options, same), same)]
    return Decoded(ids, reason)


def _stop_reason(
    ids: Sequence[int], limit: int, options: GenerationOptions, same: LoopTokens | None = None
) -> str | None:
    """Why a reply that did not end its turn stops after its last token, or None to go on."""
    if options.repetition_guard and repeated_ngram(ids, options, same):
        return "repetition"
    if len(ids) >= limit:
        return "length"
    return None


def _pick(
    logits: torch.Tensor, options: GenerationOptions, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, V) logits -> (B,) next tokens: argmax, or a temperature/top-p sample."""
    if options.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / options.temperature, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the mass before it already reaches top_p (the top token always stays).
        drop = sorted_probs.cumsum(-1) - sorted_probs >= options.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class JointRows:
    """Joint CTC/LM decoding for the rows of a batch that have a CTC prefix scorer: their LM
    scores are replaced by `joint_step`'s, and each row's CTC state follows its chosen tokens."""

    def __init__(
        self,
        scorers: Sequence[CtcPrefixScorer | None],
        eos_ids: Collection[int],
        weight: float,
    ):
        self.scorers, self.eos_ids, self.weight = list(scorers), eos_ids, weight
        self.states = [s.initial() if s is not None else None for s in self.scorers]
        self.children: dict[int, dict[int, PrefixState]] = {}

    @classmethod
    def of(cls, prefill: Prefill, eos_ids: Collection[int], options: GenerationOptions):
        """The rows' joint scoring, or None when no row has a scorer or the weight is 0."""
        if options.ctc_weight == 0 or not any(s is not None for s in prefill.ctc):
            return None
        return cls(prefill.ctc, eos_ids, options.ctc_weight)

    def rescore(self, logits: torch.Tensor, active: Sequence[int]) -> torch.Tensor:
        """(B, V) next-token logits of the `active` rows -> joint scores where a row has CTC."""
        for slot, row in enumerate(active):
            scorer = self.scorers[row]
            if scorer is not None:
                logprobs = torch.log_softmax(logits[slot], dim=-1)
                state = self.states[row]
                logits[slot], self.children[row] = joint_step(
                    logprobs, scorer, state, self.eos_ids, self.weight
                )
        return logits

    def fork(self, parents: Sequence[int], tokens: Sequence[int]) -> None:
        """Beam search: the new rows are `parents`' rows followed by `tokens`."""
        states = [self.states[p] for p in parents]
        children = [self.children.get(p, {}) for p in parents]
        self.scorers = [self.scorers[p] for p in parents]
        self.states = [c.get(t, s) for c, t, s in zip(children, tokens, states)]
        self.children = {}

    def advance(self, row: int, token: int) -> None:
        child = self.children.pop(row, {}).get(token)
        if child is not None:  # a token CTC does not know leaves the state as it was
            self.states[row] = child


class Decoder:
    """The decoding of one batch of prompts.

    Iterate `steps()` for the [(row, token)] chosen at each step (end-of-turn tokens included),
    or call `run()`; once the steps are done, `results` holds one Decoded per row. The prompts
    go through the LM on the first step: `prefill(rows)` gives their Prefill. With `num_beams`
    > 1 each row is a beam search of its own, and all rows' tokens come as one step.
    """

    def __init__(
        self,
        lm,
        prefill: Callable[[list[int]], Prefill],
        max_new_tokens: Sequence[int],
        eos_ids: Collection[int],
        options: GenerationOptions,
        same: LoopTokens | None = None,
    ):
        self.lm, self.prefill, self.limits = lm, prefill, list(max_new_tokens)
        self.eos_ids, self.options, self.same = eos_ids, options, same
        self.results: list[Decoded] | None = None

    def run(self) -> list[Decoded]:
        for _ in self.steps():
            pass
        return self.results  # type: ignore[return-value]

    @torch.inference_mode()
    def steps(self) -> Iterator[list[tuple[int, int]]]:
        if self.options.num_beams > 1:
            self.results = [
                beam_search(
                    self.lm, self.prefill([row]), limit, self.eos_ids, self.options, self.same
                )
                for row, limit in enumerate(self.limits)
            ]
            yield [(row, t) for row, r in enumerate(self.results) for t in r.token_ids]
        else:
            yield from self._greedy()

    def _greedy(self) -> Iterator[list[tuple[int, int]]]:
        """Every row one token per step (argmax or a sample); finished rows leave the batch."""
        options, B = self.options, len(self.limits)
        prefill = self.prefill(list(range(B)))
        out, cache, attention_mask, positions = prefill[:4]
        joint = JointRows.of(prefill, self.eos_ids, options)
        device = attention_mask.device
        generator = None
        if options.temperature > 0 and options.seed is not None:
            generator = torch.Generator(device=device).manual_seed(options.seed)
        tokens: list[list[int]] = [[] for _ in range(B)]
        reasons: list[str | None] = [None] * B
        active = list(range(B))  # original rows still decoding, in cache row order
        last_position = positions[:, -1]
        bans = None
        if options.no_repeat_ngram_size:
            bans = [NgramBan(options.no_repeat_ngram_size) for _ in range(B)]
        while True:
            logits = out.logits[:, -1].float()
            if bans is not None:
                for slot, row in enumerate(active):
                    banned = bans[row].banned(tokens[row])
                    if banned:
                        logits[slot, banned] = float("-inf")
            if joint is not None:
                logits = joint.rescore(logits, active)
            chosen = _pick(logits, options, generator).tolist()
            events, keep = [], []
            for slot, (row, token) in enumerate(zip(active, chosen)):
                events.append((row, token))
                if joint is not None:
                    joint.advance(row, token)
                if token in self.eos_ids:
                    reasons[row] = "stop"
                    continue
                tokens[row].append(token)
                if bans is not None:
                    bans[row].add(tokens[row])
                reasons[row] = _stop_reason(tokens[row], self.limits[row], options, self.same)
                if reasons[row] is None:
                    keep.append(slot)
            yield events
            if not keep:
                break
            if len(keep) < len(active):  # finished rows leave the batch and the cache
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                attention_mask, last_position = attention_mask[index], last_position[index]
                active = [active[s] for s in keep]
                chosen = [chosen[s] for s in keep]
            attention_mask = torch.cat(
                [attention_mask, attention_mask.new_ones((len(active), 1))], dim=1
            )
            last_position = last_position + 1
            out = self.lm(
                input_ids=torch.tensor(chosen, device=device)[:, None],
                attention_mask=attention_mask,
                position_ids=last_position[:, None],
                cache=cache,
                use_cache=True,
            )
        self.results = [
            _decoded(tokens[row], reasons[row] or "length", options, self.same) for row in range(B)
        ]


def beam_search(
    lm,
    prefill: Prefill,
    max_new_tokens: int,
    eos_ids: Collection[int],
    options: GenerationOptions,
    same: LoopTokens | None = None,
) -> Decoded:
    """One prompt, `num_beams` hypotheses kept per step by summed log-probability.

    As Whisper's decoder: the search ends once `num_beams` hypotheses have finished, and the
    best finished one by mean log-probability per token wins. A hypothesis the repetition
    guard stops finishes too (cut at its loop), but wins only when every finished one looped.
    """
    K = options.num_beams
    out, cache, attention_mask, positions = prefill[:4]
    joint = JointRows.of(prefill, eos_ids, options)
    device = attention_mask.device
    beams: list[list[int]] = [[]]
    scores = torch.zeros(1, device=device)
    last_position = positions[:, -1]
    # (looped, mean log-prob, tokens, reason)
    finished: list[tuple[bool, float, list[int], str]] = []
    while True:
        logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        if joint is not None:  # each beam is a row of its own
            logprobs = joint.rescore(logprobs, list(range(len(beams))))
        total = (scores[:, None] + logprobs).flatten()
        vocab = logprobs.shape[-1]
        parents, new_beams, new_scores = [], [], []
        best = total.topk(min(2 * K, total.numel()))
        for score, index in zip(best.values.tolist(), best.indices.tolist()):
            if score == float("-inf"):  # joint scoring leaves fewer than 2K candidates
                break
            parent, token = divmod(index, vocab)
            ended = token in eos_ids
            ids = beams[parent] + ([] if ended else [token])
            reason = "stop" if ended else _stop_reason(ids, max_new_tokens, options, same)
            if reason == "stop":
                finished.append((False, score / (len(ids) + 1), ids, reason))
            elif reason is not None:
                finished.append((reason == "repetition", score / len(ids), ids, reason))
            else:
                parents.append(parent)
                new_beams.append(ids)
                new_scores.append(score)
            if len(new_beams) == K:
                break
        if len(finished) >= K or not new_beams:
            break
        index = torch.tensor(parents, device=device)
        cache.batch_select_indices(index)
        if joint is not None:
            joint.fork(parents, [b[-1] for b in new_beams])
        beams, scores = new_beams, torch.tensor(new_scores, device=device)
        attention_mask = torch.cat(
            [attention_mask[index], attention_mask.new_ones((len(beams), 1))], dim=1
        )
        last_position = last_position[index] + 1
        out = lm(
            input_ids=torch.tensor([b[-1] for b in beams], device=device)[:, None],
            attention_mask=attention_mask,
            position_ids=last_position[:, None],
            cache=cache,
            use_cache=True,
        )
    # The loop ends only with a finished hypothesis: K of them, or every candidate finished.
    _, _, ids, reason = max(finished, key=lambda f: (not f[0], f[1]))
    return _decoded(ids, reason, options, same)
