"""`cli.py data download` (resume + md5, against a local HTTP server), `data check`, `datasets`, and a
linear-probe record with per-subgroup metrics on a HAM10000 replica."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from datasets.download import DownloadError, download, md5_of
from tests.datasets.replicas import make_ham10000, truncate
from tests.datasets.test_chest_and_medmnist import write_medmnist


class _RangeHandler(BaseHTTPRequestHandler):
    """Serves files from ``server.files`` (name -> bytes), honouring ``Range: bytes=N-``."""

    def do_GET(self):  # noqa: N802 (http.server API)
        name = self.path.split("?")[0].lstrip("/")
        data = self.server.files.get(name)
        if data is None:
            self.send_error(404)
            return
        self.server.ranges.append(self.headers.get("Range"))
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    server.files, server.ranges = {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server, name: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{name}?download=1"


def test_download_resumes_and_checks_md5(http_server, tmp_path: Path):
    payload = np.random.default_rng(0).integers(0, 256, 3 * 1024 * 1024 + 17, dtype=np.uint8).tobytes()
    http_server.files["file.bin"] = payload
    source = tmp_path / "source.bin"
    source.write_bytes(payload)
    expected = md5_of(source)
    dest = tmp_path / "out" / "file.bin"
    (tmp_path / "out").mkdir()
    dest.with_name("file.bin.part").write_bytes(payload[:1_000_000])  # an interrupted earlier run
    seen = []
    result = download(_url(http_server, "file.bin"), dest, expected, progress=lambda done, total: seen.append((done, total)))
    assert result.resumed_from == 1_000_000 and http_server.ranges[-1] == "bytes=1000000-"
    assert dest.read_bytes() == payload and result.md5 == expected
    assert seen[-1] == (len(payload), len(payload)) and not dest.with_name("file.bin.part").exists()
    assert download(_url(http_server, "file.bin"), dest, expected).skipped
    with pytest.raises(DownloadError, match="md5 mismatch .* published md5 is 0{32}"):
        download(_url(http_server, "file.bin"), tmp_path / "bad" / "file.bin", "0" * 32)
    assert not (tmp_path / "bad" / "file.bin").exists() and (tmp_path / "bad" / "file.bin.md5-mismatch").exists()
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(_url(http_server, "nope.bin"), tmp_path / "x.bin")


def test_cli_data_download_medmnist(http_server, tmp_path: Path):
    write_medmnist(tmp_path / "src" / "breastmnist.npz", {"train": 6, "val": 2, "test": 4})
    http_server.files["breastmnist.npz"] = (tmp_path / "src" / "breastmnist.npz").read_bytes()
    digest = md5_of(tmp_path / "src" / "breastmnist.npz")
    runner = CliRunner()
    url = _url(http_server, "breastmnist.npz")
    # the published md5 does not match a test-made file: reported, nothing installed
    result = runner.invoke(cli, ["data", "download", "medmnist:breastmnist", "--dest", str(tmp_path / "d"), "--url", url])
    assert result.exit_code == 1 and "md5 mismatch" in result.output and "750601b1f35ba3300ea97c75c52ff8f6" in result.output
    assert not (tmp_path / "d" / "breastmnist.npz").exists()
    result = runner.invoke(cli, ["data", "download", "medmnist:breastmnist", "--dest", str(tmp_path / "d"), "--url", url,
                                 "--md5", digest])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "breastmnist.npz").read_bytes() == http_server.files["breastmnist.npz"]
    result = runner.invoke(cli, ["data", "download", "ham10000"])
    assert result.exit_code == 2 and "cannot be downloaded by this command" in result.output
    result = runner.invoke(cli, ["data", "check", "medmnist:breastmnist", "--root", str(tmp_path / "d")])
    assert result.exit_code == 0 and "WARNING [md5]" in result.output and "OK with warnings" in result.output


def test_cli_data_check_reports_exact_problems(tmp_path: Path):
    root = tmp_path / "ham"
    make_ham10000(root, lesions_per_class=2, images_per_lesion=(1,))
    images = sorted((root / "images").glob("*.jpg"))
    images[0].unlink()
    images[1].write_bytes(b"")  # zero-byte download
    truncate(images[2])
    runner = CliRunner()
    result = runner.invoke(cli, ["data", "check", "ham10000", "--root", str(root)])
    assert result.exit_code == 1, result.output
    assert "ERROR [missing] 1 of 14 image files are missing" in result.output and images[0].name in result.output
    assert "ERROR [unreadable] 2 image file(s) cannot be decoded" in result.output
    assert images[1].name in result.output and images[2].name in result.output
    assert "akiec 2" in result.output and "subgroups: sex, age, site" in result.output
    quick = runner.invoke(cli, ["data", "check", "ham10000", "--root", str(root), "--quick", "--json"])
    report = json.loads(quick.output)
    assert not report["ok"] and [p["kind"] for p in report["problems"]] == ["missing"]
    (root / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\nHAM_1,ISIC_1,nv\nHAM_1,ISIC_1,nv\n")
    result = runner.invoke(cli, ["data", "check", "ham10000", "--root", str(root)])
    assert result.exit_code == 1 and "ERROR [layout]" in result.output and "lacks column(s) ['age'" in result.output


def test_cli_datasets_lists_counts(tmp_path: Path):
    make_ham10000(tmp_path / "ham", lesions_per_class=2, images_per_lesion=(1,))
    result = CliRunner().invoke(cli, ["datasets", "--root", f"ham10000={tmp_path / 'ham'}", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["ham10000"]["present"] == "yes" and rows["ham10000"]["classes"].startswith("akiec 2, bcc 2")
    assert rows["ham10000"]["tasks"] == "dx, melanoma" and rows["isic2019"]["tasks"] == "8-class, melanoma"
    assert {"medmnist:chestmnist", "pad-ufes-20", "derm7pt", "fitzpatrick17k", "chestx-ray14", "isic2020",
            "chest-xray-pneumonia"} <= set(rows)


def test_linear_record_has_subgroup_metrics(tmp_path: Path, tiny_encoder, results_dir: Path):
    root = tmp_path / "ham"
    make_ham10000(root, lesions_per_class=16, images_per_lesion=(1, 2))
    result = CliRunner().invoke(cli, ["linear", "--model", "tiny-cnn", "--dataset", "ham10000", "--root", str(root),
                                      "--results", str(results_dir), "--image-size", "16", "-o", "wd_steps=5",
                                      "-o", "n_boot=20", "--workers", "0"])
    assert result.exit_code == 0, result.output
    record = json.loads(next((results_dir / "records" / "linear" / "ham10000").glob("*.json")).read_text())
    assert record["primary_metric"] == "balanced_accuracy"
    assert set(record["subgroups"]) == {"sex", "age", "site"}
    assert set(record["subgroups"]["sex"]) <= {"male", "female"} and record["subgroups"]["sex"]
    for metrics in record["subgroups"]["sex"].values():
        assert metrics["n"] >= 10 and "balanced_accuracy" in metrics
