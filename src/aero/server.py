"""An OpenAI-compatible HTTP server that only wraps the engine (FastAPI + uvicorn).

Routes: POST /v1/audio/transcriptions, POST /v1/chat/completions, GET /v1/models[/{id}],
GET /health.

Notable choices:
- One worker thread owns the model. Handlers check and decode each request (body size,
  audio decoding, duration) and queue it; the worker takes what is waiting, up to
  `batch_size` non-streaming requests, and decodes those with equal options as one batch:
  concurrent clients share forward passes instead of taking turns.
- Bounded: at most `max_queue` requests waiting or running (503 beyond that), each with a
  deadline (504; a request that times out before it starts is never run).
- Audio comes only from uploaded bytes or base64 `input_audio` parts. Parts that name a
  path or URL (`audio_url`, `audio`) are refused: the server never opens anything a client
  names.
- Errors use OpenAI's shape {"error": {"message", "type", "param", "code"}}; malformed
  requests (FastAPI's 422) are 400s. A body over the upload limit is a 413 read no further
  than its Content-Length header; a POST without one is refused (411).
- Differences from OpenAI, on purpose: `prompt` of a transcription REPLACES the instruction
  (Aero follows instructions; Whisper reads it as preceding text); a missing `temperature`
  means greedy (0), not 1; any `model` name is accepted and answered by the served model.
  With `fallback` (`aero serve --fallback`), a transcription at temperature 0 whose greedy decode
  loops is decoded again at rising temperatures, like OpenAI's temperature 0.
- srt and vtt: with a model that has a word aligner, one generation whose words are aligned to
  the audio, and cues that follow the speech; without one, each 30 s window is transcribed on
  its own and cue times are the window boundaries. verbose_json: window segments, or with
  `timestamp_granularities[]=word` one generation, `words`, and segments cut from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from aero.audio import AudioError, decode_base64_audio, duration_seconds, load_audio
from aero.decoding import FALLBACK_TEMPERATURES, GenerationOptions
from aero.engine import ContextLengthError, Engine, Result
from aero.formats import cues, to_srt, to_vtt
from aero.server_settings import ServerSettings  # noqa: F401 - part of this module's API

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
TIMESTAMPED_FORMATS = ("verbose_json", "srt", "vtt")  # by window, or by aligned words
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and text fields beside the file


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code = param, code


def error_response(
    status: int,
    message: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


# ----- the worker: one thread owns the model ---------------------------------------------------


@dataclass
class Job:
    options: GenerationOptions
    loop: asyncio.AbstractEventLoop
    messages: list[dict] | None = None  # a chat or plain transcription request
    transcription: bool = False  # budget rule for transcripts (see Engine.prepare)
    # A timestamped transcription: audio + prompt instead of messages.
    audio: np.ndarray | None = None
    prompt: str | None = None
    word_timestamps: bool = False  # one generation, words aligned (else one request per window)
    stream: bool = False
    future: asyncio.Future | None = None  # non-streaming: the Result (or an exception)
    # Streaming: "start" or an exception, then text pieces, then the Result.
    pieces: asyncio.Queue | None = None
    cancelled: bool = False
    deadline: float = field(default_factory=lambda: float("inf"))


class Worker:
    def __init__(self, engine: Engine, settings: ServerSettings):
        self.engine, self.settings = engine, settings
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.pending = 0  # submitted and not yet answered
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, name="aero-engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        with self.lock:
            if self.pending >= self.settings.max_queue:
                raise APIError(
                    503,
                    f"The server is busy ({self.pending} requests queued); retry shortly.",
                    "server_error",
                    code="server_busy",
                )
            self.pending += 1
        self.jobs.put(job)

    def run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            jobs = [job]
            while len(jobs) < self.settings.batch_size:
                try:
                    nxt = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.jobs.put(None)  # stop after this round
                    break
                jobs.append(nxt)
            self.process(jobs)

    def process(self, jobs: list[Job]) -> None:
        now = time.monotonic()
        live = []
        for job in jobs:
            if job.cancelled or now > job.deadline:
                self.answer(job, TimeoutError("expired before it started"))
            else:
                live.append(job)
        groups: dict[GenerationOptions, list[Job]] = {}
        for job in live:
            if job.stream:
                self.run_stream(job)
            elif job.audio is not None:
                self.run_guarded(
                    [job],
                    lambda j=job: self.engine.transcribe(
                        [j.audio], j.prompt, j.options, not j.word_timestamps, j.word_timestamps
                    ),
                )
            else:
                groups.setdefault(job.options, []).append(job)
        for options, group in groups.items():
            ready, prepared = [], []
            for job in group:
                try:
                    prepared.append(
                        self.engine.prepare(job.messages, options, transcription=job.transcription)
                    )
                    ready.append(job)
                except Exception as err:  # noqa: BLE001 - answered to that request only
                    self.answer(job, err)
            if ready:
                self.run_guarded(
                    ready, lambda p=prepared, o=options: self.engine.generate_all(p, o)
                )

    def run_guarded(self, jobs: list[Job], fn) -> None:
        try:
            results = fn()
        except Exception as err:  # noqa: BLE001 - a failing batch answers its own requests
            for job in jobs:
                self.answer(job, err)
            return
        for job, result in zip(jobs, results):
            self.answer(job, result)

    def run_stream(self, job: Job) -> None:
        put = lambda item: job.loop.call_soon_threadsafe(job.pieces.put_nowait, item)
        try:
            prepared = self.engine.prepare(
                job.messages, job.options, transcription=job.transcription
            )
            stream = self.engine.stream(prepared, job.options)
            put("start")
            for piece in stream:
                if job.cancelled:  # the client went away or timed out
                    break
                put(piece)
            put(stream.result if stream.result is not None else TimeoutError("cancelled"))
        except Exception as err:  # noqa: BLE001
            put(err)
        finally:
            with self.lock:
                self.pending -= 1

    def answer(self, job: Job, value: Any) -> None:
        with self.lock:
            self.pending -= 1
        if job.pieces is not None:
            job.loop.call_soon_threadsafe(job.pieces.put_nowait, value)
            return

        def settle():
            if not job.future.done():
                if isinstance(value, BaseException):
                    job.future.set_exception(value)
                else:
                    job.future.set_result(value)

        job.loop.call_soon_threadsafe(settle)


# ----- the worker's clients: queue a job, await its answer -------------------------------------


async def _run_job(worker: Worker, job: Job) -> Result:
    """Queue a non-streaming job and wait for its Result, at most until its deadline."""
    job.future = job.loop.create_future()
    job.deadline = time.monotonic() + worker.settings.timeout_s
    worker.submit(job)
    try:
        timeout = max(0.0, job.deadline - time.monotonic())
        return await asyncio.wait_for(job.future, timeout=timeout)
    except asyncio.TimeoutError:
        job.cancelled = True
        raise _as_api_error(TimeoutError()) from None
    except Exception as err:  # noqa: BLE001
        raise _as_api_error(err) from None


async def _open_stream(worker: Worker, job: Job) -> None:
    """Queue a streaming job; returns once its generation started (errors raise here, as JSON)."""
    job.pieces = asyncio.Queue()
    job.deadline = time.monotonic() + worker.settings.timeout_s
    worker.submit(job)
    try:
        first = await asyncio.wait_for(job.pieces.get(), timeout=worker.settings.timeout_s)
    except asyncio.TimeoutError:
        job.cancelled = True
        raise _as_api_error(TimeoutError()) from None
    if isinstance(first, BaseException):
        raise _as_api_error(first)


async def _stream_items(job: Job) -> AsyncIterator[str | Result]:
    """An opened stream's text pieces, then its Result; ends early on an error or the deadline."""
    try:
        while True:
            remaining = job.deadline - time.monotonic()
            item = await asyncio.wait_for(job.pieces.get(), timeout=max(remaining, 0.001))
            if isinstance(item, BaseException):
                return
            yield item
            if isinstance(item, Result):
                return
    except asyncio.TimeoutError:
        return
    finally:
        job.cancelled = True  # stops the worker if the client left early


def _sse(payload: dict | str) -> str:
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {text}\n\n"


# ----- request parsing ---------------------------------------------------------------------------


def _as_api_error(err: BaseException, param: str | None = None) -> APIError:
    if isinstance(err, APIError):
        return err
    if isinstance(err, ContextLengthError):
        return APIError(400, str(err), param=param, code="context_length_exceeded")
    if isinstance(err, AudioError):
        return APIError(400, str(err), param=param, code="invalid_audio")
    if isinstance(err, (asyncio.TimeoutError, TimeoutError)):
        return APIError(
            504,
            "The request timed out; send shorter audio or retry when the server is less busy.",
            "server_error",
            code="timeout",
        )
    if isinstance(err, ValueError):
        return APIError(400, str(err), param=param)
    return APIError(500, f"Internal error: {type(err).__name__}: {err}", "server_error")


async def _decode_audio(data: bytes, param: str) -> np.ndarray:
    try:
        return await run_in_threadpool(load_audio, data)
    except AudioError as err:
        raise APIError(
            400, f"The {param} is not usable audio: {err}", param=param, code="invalid_audio"
        ) from None


def _check_duration(seconds: float, settings: ServerSettings, param: str) -> None:
    if seconds > settings.max_audio_seconds:
        raise APIError(
            400,
            f"The audio is {seconds:.1f} s long; this server accepts at most "
            f"{settings.max_audio_seconds:g} s per request.",
            param=param,
            code="audio_too_long",
        )


def _number(value: Any, name: str, kind: type) -> Any:
    if value is None:
        return None
    if isinstance(value, bool):
        raise APIError(400, f"'{name}' must be a number.", param=name)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise APIError(400, f"'{name}' must be a number, not {value!r}.", param=name) from None


def _options(
    temperature: Any = None, top_p: Any = None, max_tokens: Any = None, seed: Any = None
) -> GenerationOptions:
    values = {
        "temperature": _number(temperature, "temperature", float),
        "top_p": _number(top_p, "top_p", float),
        "max_new_tokens": _number(max_tokens, "max_tokens", int),
        "seed": _number(seed, "seed", int),
    }
    try:
        return GenerationOptions(**{k: v for k, v in values.items() if v is not None})
    except ValueError as err:
        param = next((k for k in ("temperature", "top_p", "max_new_tokens") if k in str(err)), None)
        raise APIError(
            400, str(err), param="max_tokens" if param == "max_new_tokens" else param
        ) from None


async def _input_audio(part: dict, where: str, settings: ServerSettings) -> np.ndarray:
    """The samples of a base64 `input_audio` part (never a path or URL)."""
    try:
        data = decode_base64_audio(part["input_audio"].get("data") or "")
    except AudioError:
        raise APIError(400, f"{where}.input_audio.data is not valid base64.", param=where) from None
    if len(data) > settings.max_upload_bytes:
        raise APIError(
            413,
            f"{where} holds {len(data)} bytes of audio; the limit is {settings.max_upload_bytes}.",
            param=where,
            code="audio_too_large",
        )
    return await _decode_audio(data, where)


async def _chat_messages(raw: Any, settings: ServerSettings) -> list[dict]:
    """Client messages -> engine messages with decoded audio; only base64 input_audio is
    accepted."""
    if not isinstance(raw, list) or not raw:
        raise APIError(400, "'messages' must be a non-empty list.", param="messages")
    out, seconds = [], 0.0
    for i, message in enumerate(raw):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant"):
            raise APIError(
                400,
                f"messages[{i}] must be an object with role system, user or assistant.",
                param=f"messages[{i}]",
            )
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise APIError(
                400,
                f"messages[{i}].content must be a string or a list of parts.",
                param=f"messages[{i}].content",
            )
        parts = []
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "input_audio" and isinstance(part.get("input_audio"), dict):
                samples = await _input_audio(part, where, settings)
                seconds += duration_seconds(samples)
                parts.append({"type": "audio", "audio": samples})
            else:
                raise APIError(
                    400,
                    f"{where} must be a 'text' part or an 'input_audio' part with "
                    "base64 data (audio by URL or path is not accepted).",
                    param=where,
                )
        out.append({"role": message["role"], "content": parts})
    _check_duration(seconds, settings, "messages")
    return out


@dataclass(frozen=True)
class TranscriptionForm:
    data: bytes  # the uploaded file, not yet decoded
    fmt: str  # response_format
    stream: bool
    options: GenerationOptions
    prompt: str | None
    words: bool = False  # timestamp_granularities includes "word"


async def _transcription_form(request: Request, settings: ServerSettings) -> TranscriptionForm:
    """The multipart form of a transcription request, checked in the order OpenAI's fields are."""
    try:
        form = await request.form(max_files=1, max_fields=32)
    except Exception as err:  # noqa: BLE001 - a body that is not multipart form data
        raise APIError(
            400, f"Send multipart/form-data with a 'file' field ({type(err).__name__}: {err})."
        ) from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise APIError(
            400, "The 'file' field (the audio) is missing or is not a file.", param="file"
        )
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise APIError(
            413,
            f"The file is over the {settings.max_upload_bytes}-byte limit.",
            param="file",
            code="audio_too_large",
        )
    fmt = str(form.get("response_format") or "json")
    if fmt not in RESPONSE_FORMATS:
        raise APIError(
            400,
            f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, not {fmt!r}.",
            param="response_format",
        )
    stream = str(form.get("stream") or "false").lower() == "true"
    if stream and fmt not in ("json", "text"):
        raise APIError(
            400, "Streaming is available for response_format json or text only.", param="stream"
        )
    granularities = form.getlist("timestamp_granularities[]") + form.getlist(
        "timestamp_granularities"
    )
    if set(granularities) - {"word", "segment"}:
        raise APIError(
            400, "timestamp_granularities may hold 'word' and 'segment'.", "timestamp_granularities"
        )
    if granularities and fmt != "verbose_json":
        raise APIError(
            400, "timestamp_granularities needs response_format verbose_json.", "response_format"
        )
    options = _options(temperature=form.get("temperature"))
    if settings.fallback and not stream and options.temperature == 0:
        options = replace(options, fallback_temperatures=FALLBACK_TEMPERATURES)
    prompt = form.get("prompt") or None
    return TranscriptionForm(data, fmt, stream, options, prompt, "word" in granularities)


async def _json_body(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(400, f"The request body is not valid JSON ({err}).") from None
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    return body


# ----- responses ---------------------------------------------------------------------------------


def _finish(result: Result) -> str:
    # OpenAI has no "repetition": a guarded stop is a stop; the flag beside it says why.
    return "length" if result.finish_reason == "length" else "stop"


def _usage(result: Result, kind: str) -> dict:
    total = result.prompt_tokens + result.completion_tokens
    if kind == "chat":
        return {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": total,
        }
    return {
        "type": "tokens",
        "input_tokens": result.prompt_tokens,
        "output_tokens": result.completion_tokens,
        "total_tokens": total,
    }


def _word(word) -> dict:
    return {"word": word.text, "start": round(word.start, 3), "end": round(word.end, 3)}


def _transcription_response(result: Result, fmt: str, words: bool = False) -> Any:
    if fmt == "text":
        return PlainTextResponse(result.text + "\n")
    if fmt == "srt":
        return PlainTextResponse(to_srt(result), media_type="application/x-subrip")
    if fmt == "vtt":
        return PlainTextResponse(to_vtt(result), media_type="text/vtt")
    if fmt == "verbose_json":
        segments = [
            {
                "id": i,
                "seek": 0,
                "start": round(s.start, 3),
                "end": round(s.end, 3),
                "text": s.text,
                "tokens": [],
                "temperature": s.temperature,
            }
            for i, s in enumerate(cues(result) if result.words else result.segments)
        ]
        extra = {"words": [_word(w) for w in result.words]} if words else {}
        return {
            **extra,
            "task": "transcribe",
            "language": "english",
            "duration": round(result.duration, 3),
            "text": result.text,
            "segments": segments,
            "stopped_by_repetition": result.stopped_by_repetition,
            "warnings": result.warnings,
        }
    return {"text": result.text, "usage": _usage(result, "transcription")}


async def _transcription_events(job: Job) -> AsyncIterator[str]:
    async for item in _stream_items(job):
        if isinstance(item, Result):
            yield _sse(
                {
                    "type": "transcript.text.done",
                    "text": item.text,
                    "usage": _usage(item, "transcription"),
                }
            )
        else:
            yield _sse({"type": "transcript.text.delta", "delta": item})


def _chat_chunk(head: dict, delta: dict, finish: str | None = None, **extra) -> str:
    """One chat.completion.chunk event; `head` holds its id, object, created and model."""
    return _sse(
        {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    )


async def _chat_events(job: Job, head: dict) -> AsyncIterator[str]:
    yield _chat_chunk(head, {"role": "assistant", "content": ""})
    async for item in _stream_items(job):
        if isinstance(item, Result):
            yield _chat_chunk(head, {}, _finish(item), usage=_usage(item, "chat"))
        else:
            yield _chat_chunk(head, {"content": item})
    yield _sse("[DONE]")


# ----- routes: plain functions over the app's state ----------------------------------------------


def _settings(request: Request) -> ServerSettings:
    return request.app.state.settings


def _worker(request: Request) -> Worker:
    return request.app.state.worker


SettingsDep = Annotated[ServerSettings, Depends(_settings)]
WorkerDep = Annotated[Worker, Depends(_worker)]
router = APIRouter()


@router.get("/health")
async def health(settings: SettingsDep, worker: WorkerDep):
    return {"status": "ok", "model": settings.model_name, "queued": worker.pending}


def _model_card(settings: ServerSettings) -> dict:
    return {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "aero"}


@router.get("/v1/models")
async def models(settings: SettingsDep):
    return {"object": "list", "data": [_model_card(settings)]}


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, settings: SettingsDep):
    if model_id != settings.model_name:
        raise APIError(
            404,
            f"The model {model_id!r} does not exist; this server serves {settings.model_name!r}.",
            param="model",
            code="model_not_found",
        )
    return _model_card(settings)


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request, settings: SettingsDep, worker: WorkerDep):
    form = await _transcription_form(request, settings)
    samples = await _decode_audio(form.data, "file")
    _check_duration(duration_seconds(samples), settings, "file")
    loop = asyncio.get_running_loop()
    if form.fmt in TIMESTAMPED_FORMATS:
        # Words (and cues that follow them) when asked, or for srt/vtt when the model can.
        words = form.words or (form.fmt != "verbose_json" and worker.engine.has_word_aligner)
        job = Job(form.options, loop, audio=samples, prompt=form.prompt, word_timestamps=words)
    else:
        messages = worker.engine.processor.transcription_messages(samples, form.prompt)
        job = Job(form.options, loop, messages=messages, transcription=True, stream=form.stream)
    if form.stream:
        await _open_stream(worker, job)
        return StreamingResponse(_transcription_events(job), media_type="text/event-stream")
    return _transcription_response(await _run_job(worker, job), form.fmt, form.words)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, settings: SettingsDep, worker: WorkerDep):
    start = time.time()
    body = await _json_body(request)
    if body.get("n", 1) != 1:
        raise APIError(400, "Only n=1 is supported.", param="n")
    options = _options(
        body.get("temperature"),
        body.get("top_p"),
        body.get("max_completion_tokens", body.get("max_tokens")),
        body.get("seed"),
    )
    messages = await _chat_messages(body.get("messages"), settings)
    stream = bool(body.get("stream", False))
    job = Job(options, asyncio.get_running_loop(), messages=messages, stream=stream)
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(start)
    if stream:
        await _open_stream(worker, job)
        head = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": settings.model_name,
        }
        return StreamingResponse(_chat_events(job, head), media_type="text/event-stream")
    result = await _run_job(worker, job)
    return {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": settings.model_name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": _finish(result),
            }
        ],
        "usage": _usage(result, "chat"),
        "stopped_by_repetition": result.stopped_by_repetition,
        "warnings": result.warnings,
    }


# ----- the app: state, error handlers, the guard, routes -----------------------------------------


async def _on_api_error(request: Request, err: APIError) -> JSONResponse:
    return error_response(err.status, err.message, err.type, err.param, err.code)


async def _on_invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    return error_response(400, f"Malformed request: {err.errors()}")


async def _on_http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    return error_response(
        err.status_code, str(err.detail), "invalid_request_error", code=str(err.status_code)
    )


async def _guard(request: Request, call_next):
    """The API key (every route but /health) and a POST's Content-Length, checked before its body
    is read; an exception a route lets through becomes a JSON 500."""
    settings: ServerSettings = request.app.state.settings
    if request.url.path != "/health" and settings.api_key is not None:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            return error_response(
                401,
                "Missing or incorrect API key: send 'Authorization: Bearer <key>'.",
                code="invalid_api_key",
            )
    if request.method == "POST":
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return error_response(411, "POST requests need a Content-Length header.")
        if int(length) > settings.max_upload_bytes + FORM_OVERHEAD_BYTES:
            return error_response(
                413,
                f"The request body is {int(length)} bytes; the limit is "
                f"{settings.max_upload_bytes} bytes of audio.",
                code="request_too_large",
            )
    try:
        return await call_next(request)
    except Exception as err:  # noqa: BLE001 - never a bare 500 page
        return error_response(500, f"Internal error: {type(err).__name__}: {err}", "server_error")


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    app.state.worker.start()
    yield
    app.state.worker.stop()


def create_app(engine: Engine, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving `engine`: its state (engine, settings, the worker thread that owns
    the model), OpenAI-shaped error handlers, the key and size guard, and the routes."""
    settings = settings or ServerSettings(model_name=engine.name)
    app = FastAPI(title="aero", lifespan=_lifespan)
    app.state.engine, app.state.settings = engine, settings
    app.state.worker = Worker(engine, settings)
    app.add_exception_handler(APIError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_invalid_request)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.middleware("http")(_guard)
    app.include_router(router)
    return app
