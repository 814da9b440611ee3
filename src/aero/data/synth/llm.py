"""Answers of the text LLM to written questions: the targets of the spoken-instruction task.

Distillation: aero-mini is trained to answer a spoken question the way SmolLM2-135M-Instruct
answers the written one, so it keeps its own voice. Greedy decoding with SmolLM2's own chat
template (which adds its default system prompt), batched with left padding.

Notable choices:
- Answers are cached in a JSON file keyed by question (with the model and settings recorded),
  because generation takes about a second per question on a laptop CPU. A cache made with
  other settings is ignored, never mixed in.
- An answer cut by the token limit is trimmed back to its last complete sentence, when it
  has one, so training targets end cleanly.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

AnswerFn = Callable[[Sequence[str]], list[str]]

MODEL_NAME = "SmolLM2-135M-Instruct"
MAX_NEW_TOKENS = 48
BATCH_SIZE = 16


def _trim(text: str, truncated: bool) -> str:
    text = text.strip()
    if truncated:
        ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text)]
        if ends:
            text = text[: ends[-1]]
    return text


def smollm2_answers(max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = BATCH_SIZE) -> AnswerFn:
    """An answer function backed by SmolLM2-135M-Instruct (loaded on first call)."""
    state: dict = {}

    def answer(questions: Sequence[str]) -> list[str]:
        import torch

        if not state:
            from aero.convert.gguf import load_smollm2

            model, tok = load_smollm2()
            tok.padding_side = "left"
            state.update(model=model, tok=tok)
        model, tok = state["model"], state["tok"]
        out = []
        for i in range(0, len(questions), batch_size):
            batch = questions[i : i + batch_size]
            prompts = [
                tok.apply_chat_template(
                    [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
                )
                for q in batch
            ]
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                )
            for row in gen[:, enc["input_ids"].shape[1] :]:
                ids = row.tolist()
                truncated = tok.eos_token_id not in ids
                out.append(_trim(tok.decode(ids, skip_special_tokens=True), truncated))
        return out

    return answer


class AnswerCache:
    """A JSON file {question: answer} for one model and settings."""

    def __init__(
        self, path: str | os.PathLike, model: str = MODEL_NAME, max_new_tokens: int = MAX_NEW_TOKENS
    ):
        self.path = Path(path)
        self.header = {"model": model, "max_new_tokens": max_new_tokens, "decoding": "greedy"}
        self.answers: dict[str, str] = {}
        if self.path.exists():
            data = json.loads(self.path.read_text())
            if {k: data.get(k) for k in self.header} == self.header:
                self.answers = data.get("answers", {})

    def fill(self, questions: Sequence[str], answer_fn: AnswerFn) -> dict[str, str]:
        """Answers for all questions, generating only the missing ones (and saving them)."""
        missing = sorted(set(questions) - set(self.answers))
        if missing:
            got = answer_fn(missing)
            if len(got) != len(missing):
                raise RuntimeError(
                    f"answer function returned {len(got)} answers for {len(missing)} questions"
                )
            self.answers.update(zip(missing, got))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(
                json.dumps({**self.header, "answers": dict(sorted(self.answers.items()))}, indent=1)
            )
            os.replace(tmp, self.path)
        return {q: self.answers[q] for q in questions}
