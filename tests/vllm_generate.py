"""Greedy generation with vLLM, run by tests/test_vllm.py under the vLLM environment's python.

    python tests/vllm_generate.py MODEL_DIR JOBS.json OUT.json

JOBS.json: {"max_tokens": N, "max_model_len": L, "batches": [[{"wav": path, "prompt": text},
...], ...]}. Each batch goes to `LLM.chat` as one list of conversations (vLLM schedules them
together), each conversation one user turn: the wav as an OpenAI `input_audio` part, then the
prompt. OUT.json: per batch, per conversation, the prompt ids vLLM built (placeholders
expanded) and the generated ids.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path


def conversation(job: dict) -> list[dict]:
    data = base64.b64encode(Path(job["wav"]).read_bytes()).decode()
    content = [
        {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
        {"type": "text", "text": job["prompt"]},
    ]
    return [{"role": "user", "content": content}]


def main(model: str, jobs_path: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams

    jobs = json.loads(Path(jobs_path).read_text())
    llm = LLM(
        model=model,
        dtype="float32",  # aero's engine runs float32 on CPU: the same arithmetic
        enforce_eager=True,
        max_model_len=jobs["max_model_len"],
        limit_mm_per_prompt={"audio": 4},
        seed=0,
        kv_cache_memory_bytes=2**30,  # a fixed 1 GiB KV cache: no share of the host's memory
    )
    params = SamplingParams(temperature=0.0, max_tokens=jobs["max_tokens"])
    out = []
    for batch in jobs["batches"]:
        results = llm.chat([conversation(job) for job in batch], params, use_tqdm=False)
        out.append(
            [
                {"prompt_ids": list(r.prompt_token_ids), "token_ids": list(r.outputs[0].token_ids)}
                for r in results
            ]
        )
    Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
