"""The local encoder registry: register -> listed -> built with the saved weights; broken entries fail clearly."""
from __future__ import annotations

import json

import pytest
import torch

from pretrained.checkpoints import MissingWeightsError
from pretrained.encoder import LoadOptions
from pretrained.errors import CheckpointError
from pretrained.local_registry import (load_local_encoders, local_registry_path, read_local_registry,
                                       register_local_encoder, unregister_local_encoder)
from pretrained.registry import ENCODERS


def _save_trained_tiny(path, scale: float = 3.0):
    """A tiny-cnn encoder with changed weights, saved in the exported-encoder layout."""
    encoder = ENCODERS.get("tiny-cnn").build(LoadOptions())
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.mul_(scale)
    torch.save({"format": "medtransfer-encoder-v1", "state_dict": encoder.state_dict()}, path)
    return encoder


@pytest.fixture
def cleanup():
    names = []
    yield names
    for name in names:
        if name in read_local_registry():
            unregister_local_encoder(name)


def test_round_trip_gives_the_saved_weights_and_provenance(tiny_encoder, tmp_path, cleanup):
    saved = _save_trained_tiny(tmp_path / "encoder.pt")
    cleanup.append("tiny-local")
    spec = register_local_encoder("tiny-local", "tiny-cnn", tmp_path / "encoder.pt", "trunk.",
                                  saved.preprocessing.to_dict(), {"pretraining": {"method": "simclr", "epochs": 2}})
    assert ENCODERS.get("tiny-local") is spec and spec.kind == "in-domain" and spec.feature_dim == 16
    assert spec.status().present
    assert "tiny-local" in read_local_registry(local_registry_path())
    built = ENCODERS.get("tiny-local").build(LoadOptions())
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(built(x), saved.eval()(x))
    assert built.provenance["pretraining"] == {"method": "simclr", "epochs": 2}
    assert len(built.provenance["weights_sha256"]) == 64
    # a fresh process would find it through the file: drop it from the live registry and reload
    ENCODERS.remove("tiny-local")
    load_local_encoders()
    assert torch.allclose(ENCODERS.get("tiny-local").build(LoadOptions())(x), saved(x))


def test_changed_or_missing_checkpoint_fails_clearly(tiny_encoder, tmp_path, cleanup):
    path = tmp_path / "encoder.pt"
    saved = _save_trained_tiny(path)
    cleanup.append("tiny-changed")
    register_local_encoder("tiny-changed", "tiny-cnn", path, "trunk.", saved.preprocessing.to_dict(), {})
    _save_trained_tiny(path, scale=2.0)
    with pytest.raises(CheckpointError, match="changed since it was registered"):
        ENCODERS.get("tiny-changed").build(LoadOptions())
    path.unlink()
    assert not ENCODERS.get("tiny-changed").status().present
    with pytest.raises(MissingWeightsError, match="tiny-changed"):
        ENCODERS.get("tiny-changed").build(LoadOptions())


def test_wrong_key_prefix_lists_the_keys(tiny_encoder, tmp_path, cleanup):
    saved = _save_trained_tiny(tmp_path / "encoder.pt")
    cleanup.append("tiny-prefix")
    register_local_encoder("tiny-prefix", "tiny-cnn", tmp_path / "encoder.pt", "module.", saved.preprocessing.to_dict(), {})
    with pytest.raises(CheckpointError, match="trunk.net.0.weight"):
        ENCODERS.get("tiny-prefix").build(LoadOptions())


def test_bad_names_and_broken_files(tiny_encoder, tmp_path, caplog):
    saved = _save_trained_tiny(tmp_path / "encoder.pt")
    with pytest.raises(ValueError, match="lowercase"):
        register_local_encoder("Bad Name", "tiny-cnn", tmp_path / "encoder.pt", "trunk.", saved.preprocessing.to_dict(), {})
    with pytest.raises(ValueError, match="taken by builtin"):
        register_local_encoder("resnet18-random", "tiny-cnn", tmp_path / "encoder.pt", "trunk.",
                               saved.preprocessing.to_dict(), {})
    path = local_registry_path()
    before = path.read_text() if path.exists() else None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{not json")
        load_local_encoders()  # logged, never raised
        assert "unreadable" in caplog.text
        path.write_text(json.dumps({"encoders": {"half-entry": {"arch": "tiny-cnn"}}}))
        load_local_encoders()
        assert "half-entry" not in ENCODERS and "skipping local encoder 'half-entry'" in caplog.text
    finally:
        if before is None:
            path.unlink()
        else:
            path.write_text(before)
