"""The encoder zoo through the CLI: a MoCo-format ResNet-50 in the weights folder runs the linear
probe and its record carries the file's sha256; ``local:ARCH``; ``weights`` list and download."""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner

from cli import cli
from pretrained.checkpoint_encoder import checkpoint_spec
from pretrained.registry import ENCODERS
from pretrained.torchvision_zoo import IMAGENET_PREPROCESSING
from pretrained.weights_sources import WeightsSource

TINY = ["--dataset", "synthderm", "--dataset-option", "n_lesions=100", "--dataset-option", "image_size=32",
        "--image-size", "32", "-o", "n_boot=100", "-o", "wd_steps=4", "-o", "max_iter=50", "--workers", "0"]  # the probe is tested elsewhere


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The probe's L-BFGS runs thousands of tiny ops: with 2 threads on a busy 2-core machine it
    spends minutes spin-waiting (8 min vs 50 s wall measured), so these CLI runs use one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "records").rglob("*.json"))]


def moco_v2_file(path: Path, arch: str = "resnet50", seed: int = 0) -> Path:
    """facebookresearch/moco --mlp save format around a seeded random torchvision model."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    dim = model.fc.in_features
    state = OrderedDict(("module.encoder_q." + k, v) for k, v in model.state_dict().items() if not k.startswith("fc."))
    state.update({"module.encoder_q.fc.0.weight": torch.randn(dim, dim) * 0.01,
                  "module.encoder_q.fc.0.bias": torch.zeros(dim),
                  "module.encoder_q.fc.2.weight": torch.randn(128, dim) * 0.01,
                  "module.encoder_q.fc.2.bias": torch.zeros(128),
                  "module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.03).state_dict()
    torch.save({"epoch": 800, "arch": arch, "state_dict": state, "optimizer": optimizer}, path)
    return path


def test_linear_with_moco_file_records_its_sha256(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    path = moco_v2_file(weights / "moco_v2_800ep_pretrain.pth.tar")
    results = tmp_path / "results"
    result = CliRunner().invoke(cli, ["linear", "--model", "moco", *TINY, "--weights-dir", str(weights),
                                      "--results", str(results), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "linear | resnet50-moco-v2 |" in result.output
    [record] = records(results)
    encoder = record["provenance"]["encoder"]
    assert encoder["weights_sha256"] == sha256(path)
    assert encoder["file"] == str(path) and encoder["format"] == "moco-v2"
    assert encoder["dropped_keys"] == {"projection head of the query encoder": 4, "queue and its pointer": 2}
    assert record["provenance"]["preprocessing"]["input_size"] == 32


def test_missing_weights_and_untrusted_files_are_clear_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["linear", "--model", "swav", *TINY, "--weights-dir", str(tmp_path),
                                 "--results", str(tmp_path / "r")])
    assert result.exit_code != 0 and "swav_800ep_pretrain.pth.tar" in result.output
    assert "dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar" in result.output
    (tmp_path / "pretrain_res50x1.pkl").write_bytes(b"\x80\x02}q\x00.")  # any pickle: refused before reading
    result = runner.invoke(cli, ["linear", "--model", "byol", *TINY, "--weights-dir", str(tmp_path),
                                 "--results", str(tmp_path / "r")])
    assert result.exit_code != 0 and "--trust-checkpoint" in result.output and "Traceback" not in result.output


def test_adhoc_local_model_from_the_cli(tmp_path):
    path = moco_v2_file(tmp_path / "mine.pth.tar", arch="resnet18", seed=1)
    results = tmp_path / "results"
    args = ["linear", "--model", "local:resnet18", "--checkpoint", str(path), *TINY, "--results", str(results),
            "--cache-dir", str(tmp_path / "cache")]
    bad = CliRunner().invoke(cli, args + ["--key-prefix", "module."])
    assert bad.exit_code != 0 and "try --key-prefix 'module.encoder_q.'" in bad.output
    result = CliRunner().invoke(cli, args + ["--key-prefix", "module.encoder_q."])
    assert result.exit_code == 0, result.output
    [record] = records(results)
    assert record["identity"]["encoder"].startswith("local-resnet18-")
    assert record["provenance"]["encoder"]["weights_sha256"] == sha256(path)
    for name in [n for n in ENCODERS.names() if n.startswith("local-resnet18-")]:
        ENCODERS.remove(name)


@pytest.fixture
def served_encoder(tmp_path):
    """An encoder whose checkpoint is served by a local HTTP server (with a known sha256)."""
    served = tmp_path / "served"
    served.mkdir()
    payload = moco_v2_file(served / "tiny_moco.pth.tar", arch="resnet18", seed=2)
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/tiny_moco.pth.tar"
    source = WeightsSource("tiny_moco.pth.tar", "moco-cxr-resnet", url, sha256=sha256(payload))
    spec = checkpoint_spec("test-served-moco", "resnet18", 512, (source,), IMAGENET_PREPROCESSING, kind="medical",
                           description="test", licence="test licence")
    ENCODERS.add(spec.name, spec, origin="test")
    yield spec, sha256(payload)
    ENCODERS.remove(spec.name)
    httpd.shutdown()
    httpd.server_close()


def test_weights_list_and_download(tmp_path, served_encoder):
    spec, digest = served_encoder
    target = tmp_path / "weights"
    runner = CliRunner()
    listing = json.loads(runner.invoke(cli, ["weights", "--weights-dir", str(target), "--json"]).output)
    row = next(r for r in listing if r["encoder"] == spec.name)
    assert row["path"] is None and row["expected_sha256"] == digest and row["url"].startswith("http://127.0.0.1")
    assert any(r["encoder"] == "resnet50-moco-v2" and r["file"] == "moco_v2_800ep_pretrain.pth.tar" for r in listing)

    result = runner.invoke(cli, ["weights", "download", spec.name, "--weights-dir", str(target)])
    assert result.exit_code == 0, result.output
    assert f"sha256 {digest} (verified)" in result.output
    assert sha256(target / "tiny_moco.pth.tar") == digest
    again = runner.invoke(cli, ["weights", "download", spec.name, "--weights-dir", str(target)])
    assert "already present" in again.output
    table = runner.invoke(cli, ["weights", "--weights-dir", str(target)]).output
    assert digest[:16] in table
    models = json.loads(runner.invoke(cli, ["models", "--weights-dir", str(target), "--json"]).output)
    assert next(r for r in models if r["name"] == spec.name)["present"] == "yes"
    nothing = runner.invoke(cli, ["weights", "download", "resnet18-random"])
    assert nothing.exit_code != 0 and "needs no weights file" in nothing.output
    manual = runner.invoke(cli, ["weights", "download", "simclr"])
    assert manual.exit_code != 0 and "simclr-converter" in manual.output


def test_models_add_and_remove(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path / "cache"))
    path = moco_v2_file(tmp_path / "cxr.pth.tar", arch="resnet18", seed=3)
    runner = CliRunner()
    result = runner.invoke(cli, ["models", "add", "resnet18-my-cxr", "--arch", "resnet18", "--checkpoint", str(path),
                                 "--key-prefix", "module.encoder_q.", "--preprocessing", "cxr"])
    assert result.exit_code == 0, result.output
    assert "added local encoder 'resnet18-my-cxr'" in result.output
    listing = json.loads(runner.invoke(cli, ["models", "--json"]).output)
    row = next(r for r in listing if r["name"] == "resnet18-my-cxr")
    assert row["present"] == "yes" and row["origin"] == "local registry"
    assert runner.invoke(cli, ["models", "remove", "resnet18-my-cxr"]).exit_code == 0
    assert "resnet18-my-cxr" not in ENCODERS
