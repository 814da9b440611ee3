"""Held-out WER during training: the learning curve (WER against samples and tokens seen).

Greedy transcription of a fixed held-out manifest (its user turns are the prompts, its
assistant turns the references), scored as corpus WER with the Whisper normalizer — the
same scoring as `aero eval`, so curve points and final tables agree.
"""

from __future__ import annotations

import torch

from aero.data.manifest import Sample, with_resolved_audio
from aero.processing import content_text


def _reference(messages: list[dict]) -> str:
    return content_text(next(m["content"] for m in messages if m["role"] == "assistant"))


def heldout_wer(model, processor, samples: list[Sample], batch_size: int = 8, max_new_tokens: int = 128) -> dict:
    from aero.evaluation.wer import corpus_score, score_texts

    was_training = model.training
    model.eval()
    references, hypotheses = [], []
    tok = processor.tokenizer
    try:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            prompts = []
            for sample in chunk:
                messages = with_resolved_audio(sample)
                prompts.append([m for m in messages[: next(i for i, m in enumerate(messages) if m["role"] == "assistant")]])
                references.append(_reference(messages))
            inputs = processor(messages=prompts)
            with torch.inference_mode():
                out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            hypotheses += [t.strip() for t in processor.batch_decode(out[:, inputs["input_ids"].shape[1]:])]
    finally:
        model.train(was_training)
    score = corpus_score(score_texts(references, hypotheses))
    return {
        "heldout_wer": score.error_rate,
        "heldout_utterances": score.n_utterances,
        "heldout_example": {"reference": references[0], "hypothesis": hypotheses[0]} if references else None,
    }
