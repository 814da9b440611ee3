"""A directory cache for converted models: convert once, later starts load a saved directory.

Notable choices:
- The root is the `cache_dir` argument, else `$AERO_CACHE`, else `~/.cache/aero`.
- An entry is `<root>/<name>-<key>` where the key hashes the source file's size and mtime and
  the converter's version: reinstalling the source package or changing a converter makes a
  new entry (and the stale one is deleted after the new one is complete). An entry is stale
  when it was made from the same source path or its source file is gone; entries made from
  another installation's copy (a second virtual environment) stay, so switching between
  environments does not convert again each time.
- Writes are atomic: the converter fills a hidden temp directory beside the entry, which is
  renamed into place only when complete. A crash leaves at worst a temp directory, never a
  half-written entry; two processes converting at once both succeed (the second rename loses
  and its copy is discarded).
- `SOURCE_FILE` in an entry records what it was made from; its presence marks completeness.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE_FILE = "aero_source.json"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("AERO_CACHE"):
        return Path(os.environ["AERO_CACHE"])
    return Path.home() / ".cache" / "aero"


def source_key(source: Path, version: int) -> str:
    stat = source.stat()
    return hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}:{version}".encode()).hexdigest()[:12]


def cached_conversion(
    name: str,
    source: Path,
    version: int,
    convert: Callable[[Path], None],
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The cache entry for `source`, made by `convert(directory)` if it does not exist yet."""
    root = cache_root(cache_dir)
    entry = root / f"{name}-{source_key(source, version)}"
    if (entry / SOURCE_FILE).is_file():
        return entry

    root.mkdir(parents=True, exist_ok=True)
    log.warning("Converting %s from %s (once; cached in %s).", name, source, entry)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        convert(tmp)
        stat = source.stat()
        record = {
            "name": name,
            "source": str(source),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "converter_version": version,
            "seconds": round(time.perf_counter() - start, 2),
        }
        (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / SOURCE_FILE).is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_stale(root, name, source, keep=entry)
    return entry


def _remove_stale(root: Path, name: str, source: Path, keep: Path) -> None:
    """Delete complete entries of `name` made from this source path (an older file or converter)
    or from a source file that no longer exists."""
    for other in root.glob(f"{name}-" + "?" * len(keep.name.rsplit("-", 1)[1])):
        if other == keep or not other.is_dir() or not (other / SOURCE_FILE).is_file():
            continue
        try:
            made_from = json.loads((other / SOURCE_FILE).read_text())["source"]
        except (OSError, ValueError, KeyError, TypeError):
            made_from = None  # unreadable record: treat as stale
        if made_from is None or made_from == str(source) or not Path(made_from).exists():
            shutil.rmtree(other, ignore_errors=True)
