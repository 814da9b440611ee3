"""Scoring: Whisper normalizer, S/D/I equal to jiwer, corpus vs mean rate, bootstrap, empty refs."""

import jiwer
import numpy as np
import pytest

from aero.evaluation.normalize import PROTOCOL, normalize
from aero.evaluation.wer import (
    UtteranceErrors,
    align,
    bootstrap_ci,
    corpus_score,
    mean_utterance_rate,
    paired_bootstrap,
    paired_mean_bootstrap,
    score_texts,
)


def test_normalizer_is_whispers_english_rules():
    assert normalize("Hello, World!  The colour is GREY.") == "hello world the color is gray"
    assert normalize("He paid twenty-one dollars.") == "he paid $21"
    assert normalize("Mr. Smith") == "mister smith"
    assert normalize("uh I mean, hmm okay") == "i mean okay"  # fillers dropped
    assert PROTOCOL.startswith("whisper-normalizer ") and "EnglishTextNormalizer" in PROTOCOL


def test_known_sub_del_ins_match_jiwer():
    ref = "the cat sat on the mat"
    hyp = "the dog sat the mat today"  # cat->dog (S), "on" deleted (D), "today" inserted (I)
    u = align(ref, hyp)
    assert (u.ref_len, u.substitutions, u.deletions, u.insertions, u.hits) == (6, 1, 1, 1, 4)
    out = jiwer.process_words(ref, hyp)
    assert (u.substitutions, u.deletions, u.insertions) == (
        out.substitutions,
        out.deletions,
        out.insertions,
    )
    assert (
        corpus_score([u]).error_rate == pytest.approx(jiwer.wer(ref, hyp)) == pytest.approx(3 / 6)
    )


def test_normalization_applies_before_alignment():
    (u,) = score_texts(["Mr. Smith paid twenty-one dollars."], ["mister smith paid $21"])
    assert u.errors == 0 and u.ref_len == 4  # "mister smith paid $21"


def test_corpus_rate_matches_jiwer_over_the_list_and_differs_from_mean():
    refs = ["a b c d e f g h i j", "k"]  # 10 words, 1 word
    hyps = ["a b c d e f g h i x", "z"]  # 1 error, 1 error
    utts = score_texts(refs, hyps, normalized=True)
    score = corpus_score(utts)
    assert score.error_rate == pytest.approx(2 / 11)
    assert score.error_rate == pytest.approx(jiwer.wer(refs, hyps))
    assert mean_utterance_rate(utts) == pytest.approx((0.1 + 1.0) / 2)  # 0.55, not the metric
    assert (score.substitutions, score.deletions, score.insertions, score.reference_units) == (
        2,
        0,
        0,
        11,
    )


def test_cer_counts_characters():
    u = align("abc d", "abd d", unit="char")
    assert (u.ref_len, u.substitutions, u.deletions, u.insertions) == (5, 1, 0, 0)
    assert corpus_score([u], unit="char").error_rate == pytest.approx(jiwer.cer("abc d", "abd d"))
    with pytest.raises(ValueError, match="unit"):
        align("a", "a", unit="phoneme")


def test_empty_references_are_counted_apart():
    utts = score_texts(
        ["hello world", "", "ignore time segment in scoring"], ["hello word", "um yes no", "ok"]
    )
    score = corpus_score(utts)
    assert score.n_utterances == 3 and score.n_scored == 1 and score.n_empty_refs == 2
    assert score.empty_ref_insertions == 3  # "yes no" (the filler "um" is normalized away) + "ok"
    assert score.error_rate == pytest.approx(1 / 2)  # only the non-empty reference is in the rate

    only_empty = corpus_score(score_texts(["", "?!"], ["something", ""]))
    assert only_empty.error_rate is None and "empty" in only_empty.reason
    assert only_empty.empty_ref_insertions == 1
    assert bootstrap_ci(score_texts([""], ["x"])) is None
    assert corpus_score([]).error_rate is None


def _utts(pattern):
    return [UtteranceErrors(ref, err, 0, 0, ref - err) for ref, err in pattern]


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    utts = _utts([(10, 1), (12, 0), (8, 3), (20, 2), (15, 1), (5, 0), (9, 2), (11, 1)] * 5)
    point = corpus_score(utts).error_rate
    ci = bootstrap_ci(utts, n_resamples=500, seed=7)
    assert ci.low < point < ci.high
    assert 0.0 <= ci.low and ci.high <= 1.0
    assert bootstrap_ci(utts, n_resamples=500, seed=7) == ci
    assert bootstrap_ci(utts, n_resamples=500, seed=8) != ci


def test_paired_bootstrap():
    a = _utts([(10, 1)] * 40)  # 10 % everywhere
    b = _utts([(10, 3)] * 20 + [(10, 1)] * 20)  # 20 % overall
    c = paired_bootstrap(a, b, n_resamples=300, seed=1)
    assert c.rate_a == pytest.approx(0.10) and c.rate_b == pytest.approx(0.20)
    assert c.difference == pytest.approx(-0.10)
    assert c.ci.low <= c.difference <= c.ci.high < 0
    assert c.a_better_fraction == 1.0
    same = paired_bootstrap(a, a, n_resamples=100)
    assert same.difference == 0 and same.a_better_fraction == 0.0
    assert paired_bootstrap(a, b, n_resamples=300, seed=1) == c
    with pytest.raises(ValueError, match="same utterances"):
        paired_bootstrap(a, b[:-1])
    with pytest.raises(ValueError, match="reference lengths"):
        paired_bootstrap(a, _utts([(11, 1)] * 40))


def test_paired_mean_bootstrap_of_per_item_scores():
    a = [0.5] * 20 + [1.0] * 20  # mean 0.75
    b = [0.5] * 40  # mean 0.5: A higher on half the items, equal on the rest
    m = paired_mean_bootstrap(a, b, n_resamples=300, seed=1)
    assert m.mean_a == pytest.approx(0.75) and m.mean_b == pytest.approx(0.5)
    assert m.difference == pytest.approx(0.25) and m.n_items == 40
    assert 0 < m.ci.low <= m.difference <= m.ci.high <= 0.5
    assert m.a_higher_fraction == 1.0
    assert paired_mean_bootstrap(a, b, n_resamples=300, seed=1) == m
    # noisy items that differ by little: the interval straddles zero
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 60)
    noisy = paired_mean_bootstrap(base + rng.normal(0, 0.2, 60) - 0.01, base, n_resamples=500)
    assert noisy.ci.low < 0 < noisy.ci.high
    with pytest.raises(ValueError, match="same items"):
        paired_mean_bootstrap(a, b[:-1])
    with pytest.raises(ValueError, match="no item"):
        paired_mean_bootstrap([], [])
    with pytest.raises(ValueError, match="finite"):
        paired_mean_bootstrap([float("nan")], [0.0])
