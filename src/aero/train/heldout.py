"""Held-out WER during training: the learning curve (WER against samples and tokens seen).

The held-out manifest's clips are transcribed exactly as `aero eval` and the evaluation scripts
transcribe them: through the engine (`aero.evaluation.transcriber.AeroTranscriber`), greedy, with
the default transcription prompt and the engine's repetition guard, then scored as corpus WER with
the Whisper normalizer. Curve points and final tables therefore agree on the same clips. (An earlier
version called `model.generate` with each row's own prompt and no guard: one looping hypothesis
filled `eval_max_new_tokens` with insertions, which put its points 25-30 WER points above the tables
on the same clips.)
"""

from __future__ import annotations

from pathlib import Path


def heldout_items(path: str | Path, limit: int) -> list:
    """The first `limit` rows of a transcription manifest (audio path + reference)."""
    from aero.evaluation.answers import as_asr_items, chat_manifest_items

    return as_asr_items(chat_manifest_items(path, limit))


def heldout_wer(
    model, processor, items: list, batch_size: int = 8, max_new_tokens: int = 128
) -> dict:
    from aero.audio import load_audio
    from aero.evaluation.transcriber import AeroTranscriber
    from aero.evaluation.wer import corpus_score, score_texts

    was_training = model.training
    model.eval()
    try:
        transcriber = AeroTranscriber(
            "heldout", model, processor, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        hypotheses = transcriber.transcribe([load_audio(item.audio) for item in items])
    finally:
        model.train(was_training)
    references = [item.text for item in items]
    score = corpus_score(score_texts(references, hypotheses))
    return {
        "heldout_wer": score.error_rate,
        "heldout_utterances": score.n_utterances,
        "heldout_example": {"reference": references[0], "hypothesis": hypotheses[0]}
        if references
        else None,
    }
