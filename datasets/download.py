"""Resumable HTTP downloads with md5 verification (used by ``cli.py data download``).

A download writes ``<file>.part`` and resumes it with an HTTP ``Range`` request when it is run
again; only a complete file whose md5 matches is renamed into place. An md5 mismatch raises
:class:`DownloadError` naming both digests and leaves no file behind under the final name.
"""
from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download that failed or produced a file with the wrong md5; the message says which and why."""


@dataclass
class DownloadResult:
    path: Path
    md5: str
    resumed_from: int  # bytes already present in .part when this run started
    skipped: bool  # the final file existed and matched the md5


def md5_of(path: Path, chunk: int = CHUNK) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str | None = None, progress: Callable[[int, int | None], None] | None = None,
             timeout: float = 60.0) -> DownloadResult:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), then check ``md5`` when given.

    Args:
        progress: called as ``progress(bytes_done, total_bytes_or_None)`` after each chunk.
    Raises:
        DownloadError: network/HTTP failure (the .part file is kept for resuming) or md5 mismatch.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        actual = md5_of(dest)
        if md5 is None or actual == md5:
            return DownloadResult(dest, actual, 0, True)
        raise DownloadError(f"{dest} exists but its md5 is {actual}, expected {md5}. Delete it to download again, "
                            f"or keep it if you know it is right (the loader will report the mismatch).")
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "medtransfer"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # the .part file is already complete
            return _finish(part, dest, md5, start)
        raise DownloadError(f"download of {url} failed: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(f"cannot reach {url}: {getattr(error, 'reason', error)}. Check the network, or fetch "
                            f"the file by hand into {dest.parent}") from None
    with response:
        resumed = start if response.status == 206 else 0
        if start and not resumed:
            log.info("server ignored the Range request; downloading %s from the start", url)
        length = response.headers.get("Content-Length")
        total = resumed + int(length) if length is not None else None
        done = resumed
        try:
            with open(part, "ab" if resumed else "wb") as handle:
                for block in iter(lambda: response.read(CHUNK), b""):
                    handle.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
        except (OSError, urllib.error.URLError) as error:
            raise DownloadError(f"download of {url} broke off after {done} bytes ({error}); run the same command "
                                f"again to resume from {part}") from None
    if total is not None and done < total:
        raise DownloadError(f"download of {url} stopped at {done} of {total} bytes; run the same command again "
                            f"to resume from {part}")
    result = _finish(part, dest, md5, resumed)
    return result


def _finish(part: Path, dest: Path, md5: str | None, resumed: int) -> DownloadResult:
    actual = md5_of(part)
    if md5 is not None and actual != md5:
        bad = part.with_name(dest.name + ".md5-mismatch")
        os.replace(part, bad)
        raise DownloadError(f"md5 mismatch for {dest.name}: got {actual}, the published md5 is {md5}. The file was "
                            f"kept as {bad} for inspection; it was not installed. The upstream file may have changed "
                            f"or the transfer was corrupted: delete it and retry, or pass --md5 to accept another digest.")
    os.replace(part, dest)
    return DownloadResult(dest, actual, resumed, False)
