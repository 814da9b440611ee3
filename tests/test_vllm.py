"""aero on vLLM gives aero's engine's greedy tokens: same prompt ids, same generated ids.

vLLM lives in its own environment (it pins an older transformers): these tests run aero's engine
here for the reference and vLLM in a subprocess under that environment's python
(`AERO_VLLM_PYTHON`, default `.vllm-venv/bin/python`, which `scripts/vllm_env.sh` builds).
They are marked `vllm` (each vLLM start takes ~45 s on 2 CPU cores), outside the default suite:

    bash scripts/vllm_env.sh && python -m pytest -m vllm            # aero-mini's: -m "vllm or slow"
"""

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from safetensors.torch import load_file, save_file

from aero.audio import SAMPLE_RATE
from aero.decoding import GenerationOptions
from aero.engine import Engine
from conftest import make_published_checkpoint, tone

ROOT = Path(__file__).parent.parent
VLLM_PYTHON = Path(os.environ.get("AERO_VLLM_PYTHON", ROOT / ".vllm-venv" / "bin" / "python"))
PROMPT = "Please transcribe the audio"
MAX_TOKENS = 16
MAX_MODEL_LEN = 4096

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        not VLLM_PYTHON.is_file(),
        reason=f"no vLLM environment at {VLLM_PYTHON} (build it with scripts/vllm_env.sh, or set "
        "AERO_VLLM_PYTHON to a python that has vLLM and aero installed)",
    ),
]


@pytest.fixture(scope="module")
def tiny_published(tmp_path_factory) -> Path:
    """A tiny random Aero in the published layout (tied embeddings, Qwen2 LM) that vLLM's CPU
    attention takes (head_dim 32), with weights scaled so the greedy reply depends on the audio
    (the random LM otherwise echoes its last input id)."""
    return vllm_sized_checkpoint(tmp_path_factory.mktemp("vllm") / "Aero-1-Audio")


def vllm_sized_checkpoint(path: Path, aero: dict | None = None) -> Path:
    """`make_published_checkpoint` at the size above, its weights scaled as above."""
    path = make_published_checkpoint(
        path,
        aero=aero,
        hidden_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=128,
    )
    weights = load_file(path / "model.safetensors")
    weights["language_model.model.embed_tokens.weight"] /= 20
    weights["language_model.model.norm.weight"] *= 20
    for name in weights:
        if not weights[name].is_floating_point():
            continue  # a "ctc" connector's vocabulary mask
        if name.endswith(("o_proj.weight", "down_proj.weight")) or "projector" in name:
            weights[name] *= 30
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[float, Path]:
    """Float wav files (exact samples on both sides): 3 s, 65 s (three windows), 12 s, 7.5 s."""
    folder = tmp_path_factory.mktemp("clips")
    out = {}
    for seconds, freq in ((3.0, 220), (65.0, 330), (12.0, 550), (7.5, 990)):
        out[seconds] = folder / f"{seconds}.wav"
        sf.write(out[seconds], tone(seconds, freq, seed=int(seconds)), SAMPLE_RATE, "FLOAT")
    return out


def aero_reference(model_dir: Path, wavs: list[Path], max_tokens: int = MAX_TOKENS) -> list[dict]:
    """aero's engine: prompt ids and greedy ids (no repetition guard: vLLM has none; the LM's
    scores alone, as vLLM decodes a "ctc" connector's model)."""
    engine = Engine.load(str(model_dir))
    options = GenerationOptions(max_new_tokens=max_tokens, repetition_guard=False, ctc_weight=0)
    results = engine.transcribe([str(w) for w in wavs], PROMPT, options)
    out = []
    for wav, result in zip(wavs, results):
        messages = engine.processor.transcription_messages(str(wav), PROMPT)
        ids = engine.processor.encode_conversation(messages, add_generation_prompt=True)
        out.append({"prompt_ids": ids["input_ids"], "token_ids": result.token_ids})
    return out


def vllm_generate(model_dir: Path, batches: list[list[Path]], tmp: Path, **job) -> list:
    jobs = {"max_tokens": MAX_TOKENS, "max_model_len": MAX_MODEL_LEN, **job}
    jobs["batches"] = [[{"wav": str(w), "prompt": PROMPT} for w in batch] for batch in batches]
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    script = Path(__file__).parent / "vllm_generate.py"
    args = [str(VLLM_PYTHON), str(script), str(model_dir), str(tmp / "jobs.json")]
    run = subprocess.run(
        args + [str(tmp / "out.json")], capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads((tmp / "out.json").read_text())


def without_eos(ids: list[int], eos: set[int]) -> list[int]:
    return ids[:-1] if ids and ids[-1] in eos else ids


def assert_same(reference: list[dict], got: list[dict], eos: set[int]) -> None:
    for ref, out in zip(reference, got, strict=True):
        assert out["prompt_ids"] == ref["prompt_ids"]
        assert without_eos(out["token_ids"], eos) == ref["token_ids"]


def test_greedy_tokens_equal_aeros_engine(tiny_published, clips, tmp_path):
    """3 s alone, 65 s alone (three windows in one audio item), and a batch of four lengths."""
    order = [3.0, 65.0, 12.0, 7.5]
    reference = aero_reference(tiny_published, [clips[s] for s in order])
    assert len({tuple(r["token_ids"]) for r in reference}) > 1  # the reply depends on the audio
    got = vllm_generate(
        tiny_published, [[clips[3.0]], [clips[65.0]], [clips[s] for s in order]], tmp_path
    )
    eos = set(Engine.load(str(tiny_published)).eos_ids)
    assert_same(reference[:1], got[0], eos)
    assert_same(reference[1:2], got[1], eos)
    assert_same(reference, got[2], eos)
    audio_id = json.loads((tiny_published / "config.json").read_text())["audio_token_index"]
    assert reference[1]["prompt_ids"].count(audio_id) == 750 + 750 + 125  # 65 s: three windows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tiny_published, tmp_path_factory):
    """`aero serve --engine vllm` on the tiny model: vLLM's OpenAI server (the plugin loads
    through its entry point); the options after aero's own go to vLLM."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "vllm.log"
    command = [sys.executable, "-m", "aero.cli", "serve", "--engine", "vllm"]
    command += ["--model", str(tiny_published), "--port", str(port), "--vllm-python"]
    command += [str(VLLM_PYTHON), "--dtype", "float32", "--enforce-eager"]
    command += ["--max-model-len", str(MAX_MODEL_LEN), "--kv-cache-memory-bytes", str(2**30)]
    command += ["--return-tokens-as-token-ids"]  # logprobs name ids: "token_id:N"
    with open(log, "w") as out:
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_healthy(port, server, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def wait_healthy(port: int, server: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"vllm serve exited ({server.returncode}):\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    pytest.fail(f"vllm serve did not start in {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def chat_messages(wav: Path) -> list[dict]:
    audio = base64.b64encode(wav.read_bytes()).decode()
    content = [
        {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
        {"type": "text", "text": PROMPT},
    ]
    return [{"role": "user", "content": content}]


def test_openai_client_against_vllm_serve_gets_aeros_tokens(tiny_published, clips, vllm_server):
    """Chat completions with input_audio: aero's greedy ids (the random model's ids decode to
    broken UTF-8, so ids, not text); the transcription route: the chat route's text."""
    from openai import OpenAI

    reference = aero_reference(tiny_published, [clips[3.0], clips[65.0]])
    client = OpenAI(base_url=vllm_server, api_key="unused")
    name = str(tiny_published)
    for seconds, ref in zip((3.0, 65.0), reference):
        chat = client.chat.completions.create(
            model=name,
            messages=chat_messages(clips[seconds]),
            temperature=0,
            max_tokens=MAX_TOKENS,
            logprobs=True,
        )
        ids = [int(t.token.removeprefix("token_id:")) for t in chat.choices[0].logprobs.content]
        assert ids == ref["token_ids"]
        with open(clips[seconds], "rb") as f:
            transcription = client.audio.transcriptions.create(
                model=name, file=f, temperature=0, extra_body={"max_completion_tokens": MAX_TOKENS}
            )
        assert transcription.text == chat.choices[0].message.content.strip()


CANDIDATE = ROOT / "checkpoints" / "aero-mini-v2" / "adapter.safetensors"  # while one is kept
NAMES = ["aero-mini"] + ([str(CANDIDATE)] if CANDIDATE.is_file() else [])


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES, ids=["aero-mini", "v2-candidate"][: len(NAMES)])
def test_aero_mini_greedy_tokens_equal_aeros_engine(name, tmp_path):
    """aero-mini (v2 from session 7: Whisper tiny.en -> "ctc" connector -> SmolLM2 + merged
    LoRA), and a v2 candidate when one is kept, saved as a checkpoint directory as `aero serve
    --engine vllm` saves them: the same prompt ids and greedy ids on vLLM."""
    import numpy as np

    from aero.audio import load_audio
    from aero.vllm.launch import checkpoint_dir

    if name.endswith(".safetensors") and not Path(name).is_file():
        pytest.skip(f"no v2 candidate at {name}")
    model_dir = Path(checkpoint_dir(name))
    sample = load_audio(ROOT / "examples" / "sample.flac")
    long = np.concatenate([sample] * int(np.ceil(65 * SAMPLE_RATE / len(sample))))[
        : 65 * SAMPLE_RATE
    ]
    wavs = [tmp_path / "sample.wav", tmp_path / "long.wav"]
    sf.write(wavs[0], sample, SAMPLE_RATE, "FLOAT")
    sf.write(wavs[1], long, SAMPLE_RATE, "FLOAT")
    reference = aero_reference(model_dir, wavs, max_tokens=48)
    got = vllm_generate(model_dir, [wavs[:1], wavs[1:], wavs], tmp_path, max_tokens=48)
    eos = set(Engine.load(str(model_dir)).eos_ids)
    assert_same(reference[:1], got[0], eos)
    assert_same(reference[1:], got[1], eos)
    assert_same(reference, got[2], eos)


def test_a_ctc_connector_gets_aeros_token_counts_and_greedy_tokens(clips, tmp_path):
    """A "ctc" connector (argmax emissions): vLLM's processor runs the encoder and connector, so
    the prompt has the engine's number of audio tokens per window, and the LM reads the same
    summary and emitted embeddings: the same prompt ids and greedy ids."""
    ctc = dict(projector_type="ctc", projector_stack=2, connector_layers=1, ctc_emissions="argmax")
    model_dir = vllm_sized_checkpoint(tmp_path / "ctc", aero=ctc)
    order = [3.0, 65.0, 12.0]
    reference = aero_reference(model_dir, [clips[s] for s in order])
    audio_id = json.loads((model_dir / "config.json").read_text())["audio_token_index"]
    counts = [r["prompt_ids"].count(audio_id) for r in reference]
    assert len(set(counts)) == 3
    assert len({tuple(r["token_ids"]) for r in reference}) == 3  # the reply depends on the audio
    got = vllm_generate(model_dir, [[clips[s] for s in order]], tmp_path)
    assert_same(reference, got[0], set(Engine.load(str(model_dir)).eos_ids))


def test_a_ctc_connector_with_mixed_emissions_is_refused_with_a_clear_message():
    """A "mix" emission is a blend of embeddings, not a token id vLLM's prompt could hold: the
    plugin says so and names `aero serve`."""
    code = (
        "from types import SimpleNamespace\n"
        "from aero.vllm.model import check_servable\n"
        "check_servable(SimpleNamespace(projector_type='ctc', ctc_emissions='mix'))\n"
    )
    run = subprocess.run([str(VLLM_PYTHON), "-c", code], capture_output=True, text=True)
    assert run.returncode != 0
    assert "'argmax' only" in run.stderr and "`aero serve`" in run.stderr
