"""An exported pretrained encoder (``encoder.pt``) round-trips through the local registry unchanged."""
from __future__ import annotations

import pytest
import torch

from pretrained.encoder import LoadOptions
from pretrained.errors import CheckpointError
from pretrained.local_registry import load_local_entries, register_local_encoder, register_saved_local_encoders, \
    remove_local_encoder
from pretrained.registry import ENCODERS
from pretrained.ssl.pipeline import KEY_PREFIX, export_encoder, read_sidecar


def _trained_tiny(scale: float):
    """A tiny-cnn encoder whose weights differ from its random init (as after pretraining)."""
    encoder = ENCODERS.get("tiny-cnn").build(LoadOptions())
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.mul_(scale)
    return encoder.eval()


@pytest.fixture
def cleanup():
    names: list[str] = []
    yield names
    for name in names:
        if name in load_local_entries():
            remove_local_encoder(name)


def test_export_register_build_gives_the_trained_weights(tiny_encoder, tmp_path, cleanup):
    trained = _trained_tiny(3.0)
    path, digest = export_encoder(trained, "tiny-cnn", {"method": "simclr", "epochs": 2}, tmp_path)
    sidecar = read_sidecar(tmp_path)
    assert sidecar["checkpoint_sha256"] == digest and sidecar["key_prefix"] == KEY_PREFIX
    cleanup.append("tiny-exported")
    spec = register_local_encoder("tiny-exported", "tiny-cnn", path, KEY_PREFIX, trained.preprocessing,
                                  {"pretraining": {"method": "simclr", "epochs": 2}}, kind="in-domain")
    assert spec.kind == "in-domain" and spec.status().present
    x = torch.rand(2, 3, 32, 32)
    built = ENCODERS.get("tiny-exported").build(LoadOptions())
    assert torch.allclose(built(x), trained(x))
    assert built.provenance["pretraining"] == {"method": "simclr", "epochs": 2}
    assert built.provenance["weights_sha256"] == digest
    ENCODERS.remove("tiny-exported")  # a fresh process finds it through the registry file
    register_saved_local_encoders()
    assert torch.allclose(ENCODERS.get("tiny-exported").build(LoadOptions())(x), trained(x))


def test_overwritten_export_is_refused_until_registered_again(tiny_encoder, tmp_path, cleanup):
    path, _ = export_encoder(_trained_tiny(3.0), "tiny-cnn", {}, tmp_path)
    cleanup.append("tiny-stale")
    register_local_encoder("tiny-stale", "tiny-cnn", path, KEY_PREFIX, kind="in-domain")
    export_encoder(_trained_tiny(2.0), "tiny-cnn", {}, tmp_path)
    with pytest.raises(CheckpointError, match="changed since it was registered"):
        ENCODERS.get("tiny-stale").build(LoadOptions())


def test_file_lock_serialises_two_holders(tmp_path):
    """ensure_recipe relies on it: a second shard waits until the first has pretrained."""
    import threading
    import time
    from benchmark.locks import file_lock
    events: list[str] = []

    def second() -> None:
        with file_lock(tmp_path / "x.lock"):
            events.append("second in")

    with file_lock(tmp_path / "x.lock"):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        events.append("first out")
    thread.join(5)
    assert events == ["first out", "second in"]
