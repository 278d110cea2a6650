"""Downloads against a local HTTP server on 127.0.0.1: progress, Range resume of an interrupted
download, servers that ignore Range, sha256 checks, atomic install."""
from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from pretrained.download import ChecksumMismatchError, DownloadError, download_file, partial_path

PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class FileServer:
    """Serves ``files`` with Range support; ``cut_after`` makes the next response die after N bytes."""

    def __init__(self, files: dict[str, bytes], honour_range: bool = True):
        self.files, self.honour_range = files, honour_range
        self.cut_after: int | None = None
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                data = server.files.get(self.path.split("?")[0])
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if data is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                requested = self.headers.get("Range")
                if requested and server.honour_range:
                    start = int(requested.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                cut, server.cut_after = server.cut_after, None
                self.wfile.write(body if cut is None else body[:cut])
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_with_progress_and_checksum(tmp_path):
    seen = []
    with FileServer({"/w.pth": PAYLOAD}) as server:
        result = download_file(f"{server.url}/w.pth", tmp_path / "w.pth", SHA, progress=lambda d, t: seen.append((d, t)),
                               chunk_size=65536)
    assert (tmp_path / "w.pth").read_bytes() == PAYLOAD
    assert result.sha256 == SHA and result.checksum_verified and result.resumed_from == 0
    assert seen[0] == (0, len(PAYLOAD)) and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert not partial_path(tmp_path / "w.pth").exists()


def test_interrupted_download_resumes_with_range(tmp_path):
    dest = tmp_path / "w.pth"
    with FileServer({"/w.pth": PAYLOAD}) as server:
        server.cut_after = 100_000
        with pytest.raises(DownloadError, match="run the same command again to resume"):
            download_file(f"{server.url}/w.pth", dest, SHA, chunk_size=8192)
        assert not dest.exists()
        assert partial_path(dest).stat().st_size == 100_000
        result = download_file(f"{server.url}/w.pth", dest, SHA, chunk_size=8192)
    assert server.requests[-1]["range"] == "bytes=100000-"
    assert result.resumed_from == 100_000 and result.sha256 == SHA
    assert dest.read_bytes() == PAYLOAD and not partial_path(dest).exists()


def test_server_ignoring_range_restarts_from_zero(tmp_path):
    dest = tmp_path / "w.pth"
    partial_path(dest).write_bytes(b"x" * 5000)  # stale partial data must not be kept
    with FileServer({"/w.pth": PAYLOAD}, honour_range=False) as server:
        result = download_file(f"{server.url}/w.pth", dest, SHA)
    assert result.resumed_from == 0 and dest.read_bytes() == PAYLOAD


def test_complete_partial_file_is_installed_after_416(tmp_path):
    dest = tmp_path / "w.pth"
    partial_path(dest).write_bytes(PAYLOAD)
    with FileServer({"/w.pth": PAYLOAD}) as server:
        result = download_file(f"{server.url}/w.pth", dest, SHA[:8])  # a published sha256 prefix
    assert result.checksum_verified and dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_installs_nothing(tmp_path):
    dest = tmp_path / "w.pth"
    with FileServer({"/w.pth": PAYLOAD}) as server:
        with pytest.raises(ChecksumMismatchError, match="NOT installed") as info:
            download_file(f"{server.url}/w.pth", dest, "0" * 64)
    assert SHA in str(info.value)
    assert not dest.exists() and not partial_path(dest).exists()


def test_http_errors_are_clear(tmp_path):
    with FileServer({}) as server:
        with pytest.raises(DownloadError, match="HTTP 404"):
            download_file(f"{server.url}/missing.pth", tmp_path / "m.pth")
