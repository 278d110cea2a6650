"""Inter-process locks on lock files (POSIX ``flock``): released by the kernel when the holder dies.

Used to serialise read-modify-write of shared JSON files (local encoder registry, sha256 memo),
to let one process pretrain a recipe while others wait, and to claim a benchmark cell so that two
runs on one results folder never compute the same cell at once. A ``kill -9`` leaves no stale
lock: the lock is the open file description, not the file.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def file_lock(lock_path: Path, *, wait: bool = True, remove: bool = False) -> Iterator[bool]:
    """Hold an exclusive lock on ``lock_path`` (made if missing) for the ``with`` block.

    Yields True when the lock is held. With ``wait=False`` it yields False at once when another
    process holds it. ``remove``: delete the lock file on release (a waiter then sees that the
    file it locked is gone and locks the new one), so per-item locks leave nothing behind. No-op
    (always True) where ``fcntl`` is missing.
    """
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield True
        return
    while True:
        handle = open(lock_path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            yield False
            return
        # the lock file may have been replaced while we waited: then this lock guards nothing, retry
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        yield True
    finally:
        if remove:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)  # while still held: nobody can lock this file and then lose it
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
