"""Evaluation: comparable WER (Whisper normalizer, corpus-level, S/D/I, bootstrap CI), long-form
LibriSpeech, multiple-choice audio tasks, RTFx, reports. `aero eval` is in `cli.py`."""

from .datasets import EvalItem, hf_items, librispeech_items, manifest_items
from .runner import ASR_PROMPT, Transcriber, run_asr_eval, run_choice_eval
from .wer import (
    CorpusScore,
    UtteranceErrors,
    bootstrap_ci,
    corpus_score,
    paired_bootstrap,
    paired_mean_bootstrap,
    score_texts,
)

__all__ = [
    "ASR_PROMPT",
    "CorpusScore",
    "EvalItem",
    "Transcriber",
    "UtteranceErrors",
    "bootstrap_ci",
    "corpus_score",
    "hf_items",
    "librispeech_items",
    "manifest_items",
    "paired_bootstrap",
    "paired_mean_bootstrap",
    "run_asr_eval",
    "run_choice_eval",
    "score_texts",
]
