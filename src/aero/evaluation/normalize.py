"""Text normalization for WER: Whisper's English normalizer, taken from a maintained package.

Notable choices:
- The normalizer is `whisper_normalizer.english.EnglishTextNormalizer` (the `whisper-normalizer`
  package), the same rules as openai/whisper and the Open ASR Leaderboard; never re-typed here,
  so numbers stay comparable with published tables.
- `PROTOCOL` names package and version; every results file records it, so two runs scored
  under different normalizer versions can be told apart.
- References that normalize to nothing, or to the ESB marker "ignore time segment in scoring",
  are "empty": the leaderboard drops them, and `wer.py` counts them apart instead of dividing by 0.
"""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version

NORMALIZER_PACKAGE = "whisper-normalizer"
NORMALIZER_NAME = "EnglishTextNormalizer"

# TED-LIUM (ESB) marks non-speech segments with this reference; it is not text to score.
IGNORE_MARKER = "ignore time segment in scoring"


def _package_version() -> str:
    try:
        return version(NORMALIZER_PACKAGE)
    except PackageNotFoundError:  # e.g. a vendored copy on the path
        return "unknown"


PROTOCOL = (
    f"{NORMALIZER_PACKAGE} {_package_version()} {NORMALIZER_NAME}; "
    "corpus WER = sum(S+D+I) / sum(reference words)"
)


@functools.cache
def _normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    """Whisper English normalization, with whitespace collapsed to single spaces."""
    return " ".join(_normalizer()(text).split())


def is_empty_reference(normalized: str) -> bool:
    return normalized.strip() in ("", IGNORE_MARKER)
