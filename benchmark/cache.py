"""Where caches live: the ``--cache-dir`` of the running command, else ``$MEDTRANSFER_CACHE``, else
``~/.cache/medtransfer``.

Every cache (features, rendered synthderm, decoded images, recipe encoders, the sha256 and md5
memos) asks :func:`default_cache_dir`, so one ``--cache-dir`` moves them all. The local encoder
registry is configuration, not a cache: it stays under ``$MEDTRANSFER_CACHE``.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

CACHE_ENV = "MEDTRANSFER_CACHE"
_chosen: list[Path] = []  # the innermost active cache_dir_override


def default_cache_dir() -> Path:
    if _chosen:
        return _chosen[-1]
    return Path(os.environ.get(CACHE_ENV, "~/.cache/medtransfer")).expanduser()


@contextlib.contextmanager
def cache_dir_override(path: Path | None) -> Iterator[Path]:
    """Within the block every cache lives under ``path`` (``None``: unchanged)."""
    if path is None:
        yield default_cache_dir()
        return
    _chosen.append(Path(path).expanduser())
    try:
        yield _chosen[-1]
    finally:
        _chosen.pop()
