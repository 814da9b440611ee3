"""Error rates: per-utterance S/D/I from jiwer's alignment, corpus-level WER/CER, bootstrap CIs.

Notable choices:
- Corpus-level rate = sum(S+D+I) / sum(reference units), never a mean of per-utterance rates
  (which over-weights short utterances; `mean_utterance_rate` exists only to show the gap).
- Alignment is jiwer's (`process_words` / `process_characters`, one utterance at a time) so the
  S/D/I of each utterance can be stored and re-summed without realigning.
- Empty references (after normalization) are counted apart, as the Open ASR Leaderboard drops
  them: their insertions go to `empty_ref_insertions`, not into the rate. A corpus with only
  empty references has `error_rate=None` and a `reason`, never a division by zero.
- Confidence intervals are percentile bootstraps over utterances with a seeded numpy Generator:
  the same seed gives the same interval. Paired comparisons resample the same utterance indices
  for both systems, so per-utterance difficulty cancels out. `paired_mean_bootstrap` does the
  same for per-item scores where higher is better (an answer's token F1, a choice's 0/1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import jiwer
import numpy as np

from .normalize import is_empty_reference, normalize

Unit = Literal["word", "char"]

# Resampled index matrices are built in chunks of about this many entries (8 bytes each),
# so a 100k-utterance set does not allocate n_resamples x n at once.
_BOOTSTRAP_CHUNK_ENTRIES = 2_000_000


@dataclass(frozen=True)
class UtteranceErrors:
    ref_len: int  # reference words (or characters); 0 for an empty reference
    substitutions: int
    deletions: int
    insertions: int
    hits: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def empty_ref(self) -> bool:
        return self.ref_len == 0


@dataclass(frozen=True)
class CorpusScore:
    unit: str  # "word" (WER) or "char" (CER)
    n_utterances: int  # all utterances given
    n_scored: int  # utterances with a non-empty reference: the ones in the rate
    n_empty_refs: int
    reference_units: int  # sum of reference words/characters over scored utterances
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    empty_ref_insertions: int  # hypothesis units produced where the reference is empty
    error_rate: float | None  # fraction (0.0149 = 1.49 %); None when nothing can be scored
    reason: str | None = None  # why error_rate is None

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


@dataclass(frozen=True)
class ConfidenceInterval:
    low: float
    high: float
    confidence: float
    n_resamples: int
    seed: int


@dataclass(frozen=True)
class PairedComparison:
    rate_a: float
    rate_b: float
    difference: float  # rate_a - rate_b; negative means A makes fewer errors
    ci: ConfidenceInterval  # of the difference
    a_better_fraction: float  # share of resamples where A's rate is strictly lower than B's
    n_utterances: int


@dataclass(frozen=True)
class PairedMeans:
    mean_a: float
    mean_b: float
    difference: float  # mean_a - mean_b; positive means A scores higher
    ci: ConfidenceInterval  # of the difference
    a_higher_fraction: float  # share of resamples where A's mean is strictly higher than B's
    n_items: int


def align(reference: str, hypothesis: str, unit: Unit = "word") -> UtteranceErrors:
    """S/D/I of one (already normalized) pair. An empty reference scores only insertions."""
    if unit not in ("word", "char"):
        raise ValueError(f"Unknown error-rate unit {unit!r}: use 'word' or 'char'.")
    if is_empty_reference(reference):
        produced = len(hypothesis.split()) if unit == "word" else len(hypothesis.strip())
        return UtteranceErrors(0, 0, 0, produced, 0)
    process = jiwer.process_words if unit == "word" else jiwer.process_characters
    out = process(reference, hypothesis)
    ref_len = out.hits + out.substitutions + out.deletions
    return UtteranceErrors(ref_len, out.substitutions, out.deletions, out.insertions, out.hits)


def score_texts(
    references: Sequence[str],
    hypotheses: Sequence[str],
    unit: Unit = "word",
    normalized: bool = False,
) -> list[UtteranceErrors]:
    """Align each pair; texts go through the Whisper normalizer unless `normalized` is true."""
    if len(references) != len(hypotheses):
        raise ValueError(
            f"Got {len(references)} references but {len(hypotheses)} hypotheses; they must pair up."
        )
    prep = (lambda t: t) if normalized else normalize
    return [align(prep(r), prep(h), unit) for r, h in zip(references, hypotheses)]


def corpus_score(utterances: Sequence[UtteranceErrors], unit: Unit = "word") -> CorpusScore:
    scored = [u for u in utterances if not u.empty_ref]
    empty = [u for u in utterances if u.empty_ref]
    ref_units = sum(u.ref_len for u in scored)
    s, d, i = (
        sum(getattr(u, f) for u in scored) for f in ("substitutions", "deletions", "insertions")
    )
    rate, reason = None, None
    if not utterances:
        reason = "no utterances were scored"
    elif ref_units == 0:
        reason = f"all {len(utterances)} references are empty after normalization"
    else:
        rate = (s + d + i) / ref_units
    return CorpusScore(
        unit=unit,
        n_utterances=len(utterances),
        n_scored=len(scored),
        n_empty_refs=len(empty),
        reference_units=ref_units,
        substitutions=s,
        deletions=d,
        insertions=i,
        hits=sum(u.hits for u in scored),
        empty_ref_insertions=sum(u.insertions for u in empty),
        error_rate=rate,
        reason=reason,
    )


def mean_utterance_rate(utterances: Sequence[UtteranceErrors]) -> float | None:
    """Mean of per-utterance rates. NOT the reported metric; kept to show how it differs."""
    rates = [u.errors / u.ref_len for u in utterances if not u.empty_ref]
    return float(np.mean(rates)) if rates else None


def _arrays(utterances: Sequence[UtteranceErrors]) -> tuple[np.ndarray, np.ndarray]:
    errors = np.array([u.errors for u in utterances], dtype=np.int64)
    ref = np.array([u.ref_len for u in utterances], dtype=np.int64)
    return errors, ref


def _resampled_rates(
    columns: list[tuple[np.ndarray, np.ndarray]], n_resamples: int, seed: int
) -> list[np.ndarray]:
    """Rates of each (errors, ref) system on the SAME resampled utterance indices."""
    n = len(columns[0][0])
    rng = np.random.default_rng(seed)
    rows = max(1, _BOOTSTRAP_CHUNK_ENTRIES // n)
    out: list[list[np.ndarray]] = [[] for _ in columns]
    for start in range(0, n_resamples, rows):
        idx = rng.integers(0, n, size=(min(rows, n_resamples - start), n))
        for k, (errors, ref) in enumerate(columns):
            # Callers pass scored utterances only (ref >= 1), so no resample divides by zero.
            out[k].append(errors[idx].sum(axis=1) / ref[idx].sum(axis=1))
    return [np.concatenate(parts) for parts in out]


def _interval(
    values: np.ndarray, confidence: float, n_resamples: int, seed: int
) -> ConfidenceInterval:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return ConfidenceInterval(float(low), float(high), confidence, n_resamples, seed)


def bootstrap_ci(
    utterances: Sequence[UtteranceErrors],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval | None:
    """Percentile bootstrap of the corpus rate, resampling scored utterances; None if none."""
    scored = [u for u in utterances if not u.empty_ref]
    if not scored:
        return None
    (rates,) = _resampled_rates([_arrays(scored)], n_resamples, seed)
    return _interval(rates, confidence, n_resamples, seed)


def paired_bootstrap(
    a: Sequence[UtteranceErrors],
    b: Sequence[UtteranceErrors],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Compare systems A and B scored on the same utterances, in the same order."""
    if len(a) != len(b):
        raise ValueError(
            f"Paired comparison needs the same utterances: "
            f"system A has {len(a)}, system B has {len(b)}."
        )
    if any(x.ref_len != y.ref_len for x, y in zip(a, b)):
        raise ValueError(
            "Paired comparison needs the same references: reference lengths differ between A and B."
        )
    keep = [k for k, u in enumerate(a) if not u.empty_ref]
    if not keep:
        raise ValueError("Paired comparison has no utterance with a non-empty reference.")
    a_s, b_s = [a[k] for k in keep], [b[k] for k in keep]
    rates_a, rates_b = _resampled_rates([_arrays(a_s), _arrays(b_s)], n_resamples, seed)
    rate_a, rate_b = corpus_score(a_s).error_rate, corpus_score(b_s).error_rate
    return PairedComparison(
        rate_a=rate_a,
        rate_b=rate_b,
        difference=rate_a - rate_b,
        ci=_interval(rates_a - rates_b, confidence, n_resamples, seed),
        a_better_fraction=float(np.mean(rates_a < rates_b)),
        n_utterances=len(keep),
    )


def paired_mean_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedMeans:
    """Compare the mean per-item scores of systems A and B on the same items, in the same order."""
    if len(a) != len(b):
        raise ValueError(
            f"Paired comparison needs the same items: system A has {len(a)}, system B has {len(b)}."
        )
    if len(a) == 0:
        raise ValueError("Paired comparison has no item to compare.")
    scores_a, scores_b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not (np.isfinite(scores_a).all() and np.isfinite(scores_b).all()):
        raise ValueError("Paired comparison needs finite scores; got NaN or infinity.")
    ones = np.ones(len(a))  # a "rate" over a denominator of one per item is the mean score
    means_a, means_b = _resampled_rates([(scores_a, ones), (scores_b, ones)], n_resamples, seed)
    mean_a, mean_b = float(scores_a.mean()), float(scores_b.mean())
    return PairedMeans(
        mean_a=mean_a,
        mean_b=mean_b,
        difference=mean_a - mean_b,
        ci=_interval(means_a - means_b, confidence, n_resamples, seed),
        a_higher_fraction=float(np.mean(means_a > means_b)),
        n_items=len(a),
    )
