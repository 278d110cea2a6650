"""Atomic file writes: write a temporary file beside the target, then ``os.replace`` it in.

A reader (or a killed writer's successor) sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO, Callable


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a binary handle to a temporary file, then move it to ``path`` (folders made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)``, atomically."""
    import torch  # here, so JSON-only users (records, leaderboard) do not pay for importing torch
    atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(path: Path, text: str) -> None:
    """``path.write_text(text)`` (UTF-8), atomically."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
