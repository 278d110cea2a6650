"""Downloading checkpoint files: resumable, checksummed, installed atomically.

:func:`download_file` writes to ``<file>.part``. A rerun after an interruption resumes that
partial file with an HTTP Range request (a server that ignores Range restarts from zero). When
the upload is complete its sha256 is computed; if an expected sha256 (or the prefix upstream
publishes) is known and differs, the partial file is deleted and :class:`ChecksumMismatchError`
is raised, so a corrupt file is never installed. Otherwise ``.part`` is renamed onto the final
name in one step (``os.replace``). Progress goes to a callback; printing is the CLI's job.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

USER_AGENT = "medtransfer-weights/1"
Progress = Callable[[int, "int | None"], None]  # (bytes on disk, total bytes or None)


class DownloadError(RuntimeError):
    """A download that failed; the message says what to do (usually: run the command again)."""


class ChecksumMismatchError(DownloadError):
    """The downloaded file's sha256 is not the expected one (the file was not installed)."""


@dataclass
class DownloadResult:
    path: Path
    sha256: str
    size: int
    resumed_from: int  # bytes already on disk from an earlier, interrupted download
    checksum_verified: bool


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def download_file(url: str, dest: str | Path, expected_sha256: str | None = None, *,
                  progress: Progress | None = None, chunk_size: int = 1 << 20, timeout: float = 60.0
                  ) -> DownloadResult:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), check it, then install it atomically."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest)
    offset = part.stat().st_size if part.is_file() else 0
    resumed_from = offset
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing left to fetch: the partial file may be complete
            total = _content_range_total(error.headers.get("Content-Range"))
            if total is not None and total == offset:
                return _finish(part, dest, expected_sha256, offset, resumed_from)
            part.unlink(missing_ok=True)
            raise DownloadError(f"the server rejected resuming {part.name} ({offset} bytes); the partial file was "
                                f"deleted, run the command again to start over") from None
        raise DownloadError(f"HTTP {error.code} {error.reason} for {url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise DownloadError(f"cannot reach {url}: {getattr(error, 'reason', error)}") from None
    with response:
        status = getattr(response, "status", 200)
        length = _int(response.headers.get("Content-Length"))
        if offset and status == 206:
            start = _content_range_start(response.headers.get("Content-Range"))
            if start != offset:
                raise DownloadError(f"server resumed at byte {start}, expected {offset}; delete {part} and retry")
            total = _content_range_total(response.headers.get("Content-Range")) or (
                offset + length if length is not None else None)
            mode = "ab"
            log.info("resuming %s at byte %d", dest.name, offset)
        else:
            if offset:
                log.info("server ignored the Range request; restarting %s from zero", dest.name)
            offset, resumed_from, total, mode = 0, 0, length, "wb"
        done = offset
        if progress is not None:
            progress(done, total)
        try:
            with open(part, mode) as handle:
                while True:
                    block = response.read(chunk_size)
                    if not block:
                        break
                    handle.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
        except (OSError, http.client.HTTPException, socket.timeout) as error:
            raise DownloadError(f"download of {dest.name} interrupted after {done} of {total or '?'} bytes "
                                f"({error}); run the same command again to resume from {part}") from None
    if total is not None and done != total:
        raise DownloadError(f"download of {dest.name} stopped after {done} of {total} bytes; run the same command "
                            f"again to resume from {part}")
    return _finish(part, dest, expected_sha256, done, resumed_from)


def _finish(part: Path, dest: Path, expected_sha256: str | None, size: int, resumed_from: int) -> DownloadResult:
    digest = sha256_of(part)
    verified = False
    if expected_sha256:
        expected = expected_sha256.lower()
        if not digest.startswith(expected):
            part.unlink(missing_ok=True)
            raise ChecksumMismatchError(
                f"sha256 of the downloaded {dest.name} is {digest}, expected {expected}"
                f"{' (prefix)' if len(expected) < 64 else ''}. The file was NOT installed and the partial download "
                f"was deleted; the source may have changed or the transfer was corrupted. Run again to retry.")
        verified = True
    os.replace(part, dest)
    return DownloadResult(dest, digest, size, resumed_from, verified)


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(?:\d+|\*)", value or "")
    return int(match.group(1)) if match else None


def _content_range_total(value: str | None) -> int | None:
    match = re.search(r"/(\d+)$", value or "")
    return int(match.group(1)) if match else None
