"""Finding checkpoint files and fingerprinting them.

Checkpoints are located, never hard-coded: ``--weights-dir``, then ``$MEDTRANSFER_WEIGHTS``, then
``~/.cache/medtransfer/weights``. A missing file raises :class:`MissingWeightsError` naming the file,
every place it was looked for, and where to get it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from benchmark.atomic import atomic_write_text
from benchmark.cache import default_cache_dir
from benchmark.locks import file_lock

log = logging.getLogger(__name__)

WEIGHTS_ENV = "MEDTRANSFER_WEIGHTS"
DEFAULT_WEIGHTS_DIR = Path("~/.cache/medtransfer/weights")


class MissingWeightsError(FileNotFoundError):
    """A checkpoint file that is not in any of the searched folders."""

    def __init__(self, filename: str, searched: list[Path], how_to_get: str):
        self.filename, self.searched, self.how_to_get = filename, searched, how_to_get
        places = "\n".join(f"  - {path}" for path in searched)
        super().__init__(f"weights file '{filename}' not found. Looked in:\n{places}\n{how_to_get}")

    def __str__(self) -> str:
        return self.args[0]


def weight_search_dirs(weights_dir: str | Path | None = None) -> list[Path]:
    """The folders searched for checkpoints, in priority order."""
    dirs: list[Path] = []
    if weights_dir:
        dirs.append(Path(weights_dir).expanduser())
    if os.environ.get(WEIGHTS_ENV):
        dirs.extend(Path(p).expanduser() for p in os.environ[WEIGHTS_ENV].split(os.pathsep) if p)
    dirs.append(DEFAULT_WEIGHTS_DIR.expanduser())
    return dirs


def torch_hub_checkpoint_dir() -> Path:
    """Where torchvision's weights API caches its downloads (``$TORCH_HOME/hub/checkpoints``)."""
    import torch.hub
    return Path(torch.hub.get_dir()) / "checkpoints"


def locate(filename: str, dirs: list[Path]) -> Path | None:
    """First ``dir/filename`` that exists, else ``None``."""
    for directory in dirs:
        candidate = directory / filename
        if candidate.is_file():
            return candidate
    return None


def require(filename: str, dirs: list[Path], how_to_get: str) -> Path:
    """Like :func:`locate` but raises :class:`MissingWeightsError` when absent."""
    path = locate(filename, dirs)
    if path is None:
        raise MissingWeightsError(filename, dirs, how_to_get)
    return path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, memoised on (path, size, mtime) in the cache folder's ``sha256.json``.

    The memo is updated under a lock and written atomically (concurrent runs lose no entry); an
    unreadable memo is ignored and rebuilt, an unwritable one costs only the memoisation.
    """
    path = Path(path).resolve()
    stat = path.stat()
    memo_key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = default_cache_dir() / "sha256.json"
    known = _read_memo(memo_path).get(memo_key)
    if isinstance(known, str):
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    value = digest.hexdigest()
    try:
        with file_lock(memo_path.with_name(memo_path.name + ".lock")):
            memo = _read_memo(memo_path)  # again, under the lock: another process may have added entries
            memo[memo_key] = value
            atomic_write_text(memo_path, json.dumps(memo))
    except OSError as error:
        log.debug("cannot memoise the sha256 of %s in %s: %s", path, memo_path, error)
    return value


def _read_memo(path: Path) -> dict:
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}
