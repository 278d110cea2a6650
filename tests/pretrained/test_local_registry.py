"""``local`` encoders: torchvision or timm architecture + checkpoint + key prefix, saved in JSON."""
from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import timm
import torch
import torchvision
from torch import nn

from pretrained.checkpoints import sha256_file
from pretrained.encoder import LoadOptions
from pretrained.errors import CheckpointError
from pretrained.local_registry import (LOCAL_ORIGIN, adhoc_local_encoder, local_registry_path, register_local_encoder,
                                       register_saved_local_encoders, remove_local_encoder)
from pretrained.preprocessing import CXR_MEAN, CXR_STD, Preprocessing
from pretrained.registry import ENCODERS


@pytest.fixture
def local_cache(tmp_path, monkeypatch):
    """A private MEDTRANSFER_CACHE; every encoder a test registers is unregistered afterwards."""
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path / "cache"))
    before = set(ENCODERS.names())
    yield tmp_path
    for name in set(ENCODERS.names()) - before:
        ENCODERS.remove(name)


@pytest.fixture(scope="module")
def r18() -> nn.Module:
    torch.manual_seed(5)
    return torchvision.models.resnet18(weights=None).eval()


def pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    head, model.fc = model.fc, nn.Identity()
    with torch.no_grad():
        out = model(x)
    model.fc = head
    return out


def test_register_save_reload_and_remove(local_cache, r18):
    # an in-domain SSL trainer saving Encoder.state_dict(): keys "trunk.*", plus a projection head
    state = OrderedDict(("trunk." + k, v) for k, v in r18.state_dict().items() if not k.startswith("fc."))
    state["projector.0.weight"] = torch.zeros(128, 512)
    path = local_cache / "simclr_derm.pt"
    torch.save({"state_dict": state, "epoch": 10}, path)
    prep = Preprocessing(input_size=32, resize_size=32, mean=CXR_MEAN, std=CXR_STD, grayscale=True)
    spec = register_local_encoder("resnet18-simclr-derm", "resnet18", path, "trunk.", prep,
                                  {"trained_on": "synthderm", "recipe": "simclr"}, kind="in-domain")
    assert ENCODERS.origin("resnet18-simclr-derm") == LOCAL_ORIGIN and spec.feature_dim == 512
    saved = json.loads(local_registry_path().read_text())["encoders"]["resnet18-simclr-derm"]
    assert saved["key_prefix"] == "trunk." and saved["preprocessing"]["grayscale"] is True

    ENCODERS.remove("resnet18-simclr-derm")  # a new process: the zoo registers saved entries on load
    register_saved_local_encoders()
    encoder = ENCODERS.get("resnet18-simclr-derm").build(LoadOptions())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(encoder.eval()(x), pooled(r18, x), atol=1e-5)
    assert encoder.preprocessing == prep and ENCODERS.get("resnet18-simclr-derm").kind == "in-domain"
    assert encoder.provenance["weights_sha256"] == sha256_file(path)
    assert encoder.provenance["trained_on"] == "synthderm" and encoder.provenance["ignored_keys"] == 1

    remove_local_encoder("resnet18-simclr-derm")
    assert "resnet18-simclr-derm" not in ENCODERS
    assert json.loads(local_registry_path().read_text())["encoders"] == {}


def test_timm_vit_checkpoint(local_cache):
    torch.manual_seed(3)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10).eval()
    path = local_cache / "vit.pth"
    torch.save({"model": vit.state_dict()}, path)  # full model incl. its classifier 'head'
    register_local_encoder("vit-tiny-mine", "timm:vit_tiny_patch16_224", path)
    encoder = ENCODERS.get("vit-tiny-mine").build(LoadOptions()).eval()
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        expected = vit.forward_head(vit.forward_features(x), pre_logits=True)
        assert torch.allclose(encoder(x), expected, atol=1e-5)
        assert encoder.feature_map(x[:1, :, :32, :48]).shape == (1, 192, 2, 3)
    assert encoder.provenance["dropped_keys"] == {"classifier head": 2}
    assert encoder.preprocessing.mean == (0.5, 0.5, 0.5)  # timm's data config for this model


def test_wrong_prefix_fails_with_a_hint(local_cache, r18):
    path = local_cache / "moco.pth.tar"
    torch.save({"state_dict": OrderedDict(("module.encoder_q." + k, v) for k, v in r18.state_dict().items())}, path)
    name = adhoc_local_encoder("resnet18", path, "module.")
    with pytest.raises(CheckpointError, match=r"missing keys .*try --key-prefix 'module.encoder_q.'"):
        ENCODERS.get(name).build(LoadOptions())
    good = adhoc_local_encoder("resnet18", path, "module.encoder_q.")
    assert good != name and good.startswith("local-resnet18-")
    assert adhoc_local_encoder("resnet18", path, "module.encoder_q.") == good  # stable name, registered once
    assert ENCODERS.get(good).build(LoadOptions()).provenance["dropped_keys"] == {"classifier head": 2}


def test_bad_names_and_broken_registry(local_cache, r18):
    path = local_cache / "w.pth"
    torch.save(r18.state_dict(), path)
    for bad, message in (("Bad Name", "invalid encoder name"), ("moco", "already taken"),
                         ("resnet50-random", "already taken")):
        with pytest.raises(ValueError, match=message):
            register_local_encoder(bad, "resnet18", path)
    with pytest.raises(ValueError, match="unknown architecture"):
        register_local_encoder("x-net", "not_an_arch_at_all", path)
    local_registry_path().parent.mkdir(parents=True, exist_ok=True)
    local_registry_path().write_text("{not json")
    register_saved_local_encoders()  # must not raise: reported like a broken plugin
    assert "local registry" in ENCODERS.plugin_errors
    del ENCODERS.plugin_errors["local registry"]


def test_any_zoo_architecture_via_its_random_twin_with_pool_parameters(local_cache):
    """The in-domain SSL trainer's layout: ``encoder.state_dict()`` (``trunk.*`` + ``pool.*``) of a
    zoo architecture that is neither torchvision nor timm (here a test CNN with a LayerNorm pool)."""
    from benchmark.testing import TinyConvTrunk
    from pretrained.encoder import Encoder, EncoderSpec, GlobalAvgPool

    def build(options, seed=0):
        torch.manual_seed(seed)
        return Encoder("tiny-normed-random", TinyConvTrunk(8), nn.Sequential(GlobalAvgPool(), nn.LayerNorm(8)), 8,
                       Preprocessing(input_size=32, resize_size=32), {"weights_sha256": "x"})
    ENCODERS.add("tiny-normed-random", EncoderSpec("tiny-normed-random", "tiny-normed", 8, build, kind="random"),
                 origin="test")
    trained = build(None, seed=7)
    with torch.no_grad():
        trained.pool[1].weight.uniform_(0.5, 1.5)
    path = local_cache / "encoder.pt"
    torch.save({"format": 1, "architecture": "tiny-normed", "state_dict": trained.state_dict()}, path)
    spec = register_local_encoder("tiny-normed-derm", "tiny-normed", path, "trunk.",
                                  trained.preprocessing.to_dict(), {"pretraining": {"method": "simclr"}},
                                  kind="in-domain", feature_dim=8)
    encoder = spec.build(LoadOptions()).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(encoder(x), trained.eval()(x), atol=1e-6)
    assert encoder.name == "tiny-normed-derm" and encoder.provenance["pretraining"] == {"method": "simclr"}
    path.write_bytes(path.read_bytes() + b"\0")  # the file changed after registration
    with pytest.raises(CheckpointError, match="changed since it was registered"):
        spec.build(LoadOptions())
