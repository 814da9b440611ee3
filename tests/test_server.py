"""The OpenAI-compatible server, live on 127.0.0.1, driven by the official `openai` client."""

import asyncio
import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import soundfile as sf

from aero.audio import SAMPLE_RATE
from conftest import make_looping_model, make_tiny_model, make_tiny_processor, tone

openai = pytest.importorskip("openai")
KEY = "test-key-123"
MODEL = "tiny-aero"


def wav_bytes(seconds: float, freq: float = 440.0, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(seconds, freq, seed=seed), SAMPLE_RATE, format="WAV")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(directory, *extra: str):
    """`aero serve` on a free local port; yields its base URL, then stops it."""
    port = free_port()
    env = {**os.environ, "AERO_API_KEY": KEY}
    cmd = [
        sys.executable,
        "-m",
        "aero.cli",
        "serve",
        "--model",
        str(directory),
        "--port",
        str(port),
        "--threads",
        "1",
        "--max-upload-mb",
        "2",
        "--max-audio-seconds",
        "40",
        "--batch-size",
        "8",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start:\n{proc.stdout.read()}")
        time.sleep(0.3)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model().save_pretrained(directory)
    make_tiny_processor().save_pretrained(directory)
    yield from start_server(directory)


@pytest.fixture(scope="module")
def client(server):
    # The server serves any model name; MODEL is only what the client sends.
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


def post(url: str, body: bytes, headers: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def assert_error_shape(body: dict) -> None:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]


def cue_times(text: str, sep: str) -> list[float]:
    pattern = (
        rf"(\d\d):(\d\d):(\d\d){re.escape(sep)}(\d\d\d) --> "
        rf"(\d\d):(\d\d):(\d\d){re.escape(sep)}(\d\d\d)"
    )
    times = []
    for m in re.finditer(pattern, text):
        g = [int(x) for x in m.groups()]
        times += [
            g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000,
            g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000,
        ]
    return times


def test_transcription_every_format(client):
    audio = wav_bytes(35.0)
    plain = client.audio.transcriptions.create(model=MODEL, file=("a.wav", audio))
    assert isinstance(plain.text, str) and plain.text
    text = client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", audio), response_format="text"
    )
    assert text.strip() == plain.text
    verbose = client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", audio), response_format="verbose_json"
    )
    assert verbose.duration == pytest.approx(35.0)
    assert [(s.start, s.end) for s in verbose.segments] == [(0, 30), (30, 35.0)]
    srt = client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", audio), response_format="srt"
    )
    vtt = client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", audio), response_format="vtt"
    )
    assert vtt.startswith("WEBVTT")
    cues = [s for s in verbose.segments if s.text.strip()]
    for times in (cue_times(srt, ","), cue_times(vtt, ".")):
        assert len(times) == 2 * len(cues) and times == sorted(times) and times[-1] <= 35.0
    assert srt.startswith("1\n")


def test_transcription_stream_joins_to_text(client):
    audio = wav_bytes(3.0, 300)
    whole = client.audio.transcriptions.create(model=MODEL, file=("b.wav", audio)).text
    events = list(
        client.audio.transcriptions.create(model=MODEL, file=("b.wav", audio), stream=True)
    )
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert len(deltas) > 1 and len(done) == 1
    assert "".join(deltas) == done[0].text == whole


def test_chat_with_input_audio(client):
    data = base64.b64encode(wav_bytes(2.0, 500)).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
                {"type": "text", "text": "What do you hear?"},
            ],
        }
    ]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 10
    assert reply.object == "chat.completion"
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, stream=True)
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_models_and_health(client, server):
    served = client.models.list().data
    assert len(served) == 1 and client.models.retrieve(served[0].id).id == served[0].id
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    with urllib.request.urlopen(f"{server}/health") as r:  # no key needed
        assert json.loads(r.read())["status"] == "ok"


def test_bad_requests_get_json_errors_and_the_server_keeps_serving(client, server):
    with pytest.raises(openai.APIStatusError) as err:  # over the 2 MB limit
        client.audio.transcriptions.create(model=MODEL, file=("big.wav", wav_bytes(70.0)))
    assert err.value.status_code == 413
    assert_error_shape(err.value.response.json())
    with pytest.raises(openai.BadRequestError) as err:  # under 2 MB but over the 40 s limit
        client.audio.transcriptions.create(model=MODEL, file=("long.wav", wav_bytes(45.0)))
    assert err.value.response.json()["error"]["code"] == "audio_too_long"
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(
            model=MODEL, file=("notes.wav", b"this is not audio at all")
        )
    assert err.value.response.json()["error"]["code"] == "invalid_audio"
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(
            model=MODEL, file=("a.wav", wav_bytes(1.0)), response_format="xml"
        )
    with pytest.raises(openai.BadRequestError) as err:  # audio by path: never read on the server
        client.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "audio_url", "audio_url": {"url": "/etc/passwd"}}],
                }
            ],
        )
    assert "not accepted" in err.value.response.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "input_audio",
                            "input_audio": {"data": "%%%not base64", "format": "wav"},
                        }
                    ],
                }
            ],
        )
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for body in (
        b"{not json",
        b"[]",
        b'{"messages": "hi"}',
        b'{"messages": [{"role": "robot", "content": "x"}]}',
        json.dumps(
            {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}
        ).encode(),
    ):
        status, payload = post(f"{server}/v1/chat/completions", body, headers)
        assert status == 400, body
        assert_error_shape(payload)
    status, payload = post(
        f"{server}/v1/audio/transcriptions", b"x=1", {**headers, "Content-Type": "text/plain"}
    )
    assert status == 400 and payload["error"]["param"] in (None, "file")
    assert client.audio.transcriptions.create(model=MODEL, file=("a.wav", wav_bytes(1.0))).text


def test_api_key_is_required(server):
    wrong = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.models.list()
    assert (
        err.value.status_code == 401
        and err.value.response.json()["error"]["code"] == "invalid_api_key"
    )
    try:
        urllib.request.urlopen(f"{server}/v1/models")
        raise AssertionError("no key was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 401


def test_fifty_concurrent_requests(server, client):
    clips = [wav_bytes(1.0 + k, 200 + 100 * k, seed=k) for k in range(3)]
    expected = [
        client.audio.transcriptions.create(model=MODEL, file=("c.wav", c)).text for c in clips
    ]

    async def main():
        aclient = openai.AsyncOpenAI(
            base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120
        )
        calls = [
            aclient.audio.transcriptions.create(model=MODEL, file=(f"c{i}.wav", clips[i % 3]))
            for i in range(50)
        ]
        return await asyncio.gather(*calls)

    results = asyncio.run(main())
    assert len(results) == 50
    assert [r.text for r in results] == [expected[i % 3] for i in range(50)]


def test_fallback_server_redecodes_a_looping_transcription(tmp_path):
    model = make_looping_model()
    model.save_pretrained(tmp_path)
    make_tiny_processor().save_pretrained(tmp_path)
    servers = start_server(tmp_path, "--fallback")
    base = next(servers)
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=60)
        verbose = client.audio.transcriptions.create(
            model=MODEL, file=("a.wav", wav_bytes(2.0)), response_format="verbose_json"
        )
        body = verbose.model_dump()
        assert body["stopped_by_repetition"] is False and [
            s["temperature"] for s in body["segments"]
        ] == [0.2]
        sampled = client.audio.transcriptions.create(
            model=MODEL,
            file=("a.wav", wav_bytes(2.0)),
            temperature=0.5,
            response_format="verbose_json",
        ).model_dump()
        assert (
            sampled["segments"][0]["temperature"] == 0.5
        )  # a client's own temperature gets no fallback
    finally:
        next(servers, None)


def test_word_timestamps_on_a_model_with_an_aligner(tmp_path):
    import torch
    from safetensors.torch import save_file

    from aero.timestamps import ALIGNER_FILE, CtcAligner

    make_tiny_model().save_pretrained(tmp_path)
    make_tiny_processor().save_pretrained(tmp_path)
    torch.manual_seed(0)
    save_file(CtcAligner(32, hidden=16).state_dict(), str(tmp_path / ALIGNER_FILE))
    servers = start_server(tmp_path)
    base = next(servers)
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=60)
        verbose = client.audio.transcriptions.create(
            model=MODEL,
            file=("a.wav", wav_bytes(35.0)),
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        ).model_dump()
        words = verbose["words"]
        assert [w["word"] for w in words] == verbose["text"].split()
        assert all(0 <= w["start"] < w["end"] <= 35.0 for w in words)
        assert verbose["segments"] and verbose["segments"][-1]["end"] <= 35.0
        srt = client.audio.transcriptions.create(
            model=MODEL, file=("a.wav", wav_bytes(35.0)), response_format="srt"
        )
        times = cue_times(srt, ",")
        assert times == sorted(times) and times[-1] <= 35.0
        for block, start, end in zip(srt.strip().split("\n\n"), times[::2], times[1::2]):
            cue_words = " ".join(block.splitlines()[2:]).split()
            assert len(cue_words) == 1 or end - start <= 7.0  # one word cannot be cut shorter
        import httpx

        form = {"model": MODEL, "response_format": "json", "timestamp_granularities[]": "word"}
        reply = httpx.post(
            f"{base}/v1/audio/transcriptions",
            headers={"Authorization": f"Bearer {KEY}"},
            files={"file": ("a.wav", wav_bytes(2.0))},
            data=form,
            timeout=60,
        )
        assert reply.status_code == 400 and "verbose_json" in reply.json()["error"]["message"]
    finally:
        next(servers, None)
