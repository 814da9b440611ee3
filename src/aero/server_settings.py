"""The server's settings, apart from the server itself: the CLI reads their defaults without
importing FastAPI or torch (`aero --help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSettings:
    model_name: str = "aero"  # the id /v1/models reports and responses carry
    # When set, every route but /health needs "Authorization: Bearer <key>".
    api_key: str | None = None
    # Largest audio upload / JSON body (OpenAI's limit is 25 MB).
    max_upload_bytes: int = 25 * 2**20
    max_audio_seconds: float = 1800.0  # longest audio in one request (all its audios together)
    max_queue: int = 64  # requests waiting or running; more are refused with 503
    timeout_s: float = 600.0  # a request's deadline from arrival, waiting included (504 after)
    batch_size: int = 8  # queued non-streaming requests decoded together
    # Transcriptions at temperature 0 that loop are decoded again at FALLBACK_TEMPERATURES (as
    # OpenAI's API does at temperature 0); not for streamed ones, whose text is already sent.
    fallback: bool = False
