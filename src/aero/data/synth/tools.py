"""The system programs data synthesis runs (espeak-ng, festival's text2wave, flite, sox), found on
PATH."""

from __future__ import annotations

import shutil


class ToolMissing(RuntimeError):
    """A system program (espeak-ng, text2wave, flite, sox) or one of its voices is not installed."""


# the programs of the 'more' voice set, from Debian's contrib and non-free sections
MORE_VOICE_TOOLS = {"mbrola", "pico2wave"}


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None and tool in MORE_VOICE_TOOLS:
        raise ToolMissing(f"`{tool}` is not installed; run: bash scripts/install_voices.sh")
    if path is None:
        raise ToolMissing(
            f"`{tool}` is not installed; "
            "run: apt-get install -y espeak-ng festival festvox-kallpc16k "
            "festvox-kdlpc16k festvox-us-slt-hts flite sox fortunes"
        )
    return path
