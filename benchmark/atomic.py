"""Atomic file writes: write a temporary file beside the target, then ``os.replace`` it in.

A reader (or a killed writer's successor) sees the old file or the new one, never half of one.
Temporary files are named ``.<name>.<pid>-<token>@<host>.tmp``: they cannot collide (process,
thread, host), and the first write into a folder by a process removes the temporary files that
killed writers left there (same host and a dead process, or untouched for an hour).
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

STALE_SECONDS = 3600.0  # no live write leaves its temporary file untouched this long
_TEMP = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)(?:-[0-9a-f]+)?(?:@(?P<host>[A-Za-z0-9._-]+))?\.tmp$")
_swept: set[str] = set()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside ``path``."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(3)}@{_host()}.tmp")


@contextlib.contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to fill by any means (e.g. a memory map); when the block ends
    without an exception the file is fsynced and moved to ``path``, else it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path.parent)
    tmp = temp_path(path)
    try:
        yield tmp
        descriptor = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a binary handle to a temporary file, then move it to ``path`` (folders made)."""
    with atomic_target(path) as tmp:
        with open(tmp, "wb") as handle:
            write(handle)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)``, atomically."""
    import torch  # here, so JSON-only users (records, leaderboard) do not pay for importing torch
    atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(path: Path, text: str) -> None:
    """``path.write_text(text)`` (UTF-8), atomically."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def sweep_stale_temps(folder: Path, *, force: bool = False) -> list[Path]:
    """Remove the temporary files killed writers left in ``folder`` (once per folder and process unless ``force``).

    A temporary file is stale when its writer ran on this host and is dead, or when it is older
    than :data:`STALE_SECONDS` (another host's writer, or a reused process id). Returns what was removed.
    """
    key = str(Path(folder).resolve())
    if key in _swept and not force:
        return []
    _swept.add(key)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    now, host = time.time(), _host()
    for entry in entries:
        match = _TEMP.match(entry.name)
        if not match or int(match["pid"]) == os.getpid():
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        local = match["host"] in (None, host)
        if age > STALE_SECONDS or (local and not _alive(int(match["pid"]))):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or cannot tell: keep the file)
    return True


def check_writable_folder(path: Path, *, create: bool = True) -> None:
    """Raise ValueError (a one-line message: what is wrong, what to do) unless files can be written in ``path``.

    ``create``: make the folder when missing (else a missing folder is an error).
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a folder; name a folder")
    if not path.exists() and not create:
        raise ValueError(f"folder {path} does not exist")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-check.{os.getpid()}@{_host()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"cannot write into {path} ({error.strerror or type(error).__name__}); "
                         f"choose a writable folder") from None
