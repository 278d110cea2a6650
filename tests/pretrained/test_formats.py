"""Every upstream checkpoint format: a file written in the exact upstream layout loads strictly and
gives the same features as the tensors loaded directly; wrong layouts fail with a clear message.

The key maps are architecture-agnostic, so the ResNet-50 formats (MoCo, SwAV, PyContrast, PCL,
SimCLR, BYOL) are exercised with resnet18 tensors under the same prefixes and heads (CPU speed;
the ResNet-50 path is covered by tests/test_cli_encoders.py). MoCo-CXR ResNet-18 uses resnet18,
MoCo-CXR and MIMIC-CheXpert use real densenet121 shapes. Queues are shortened (K=64).
"""
from __future__ import annotations

import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from pretrained.checkpoint_encoder import load_backbone
from pretrained.errors import CheckpointError
from pretrained.formats import FORMATS

QUEUE = 64


# -- reference models -------------------------------------------------------------------------------
def seeded(arch: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    with torch.no_grad():  # non-trivial BN statistics, so a wrong buffer mapping changes features
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def r18() -> nn.Module:
    return seeded("resnet18", 1)


@pytest.fixture(scope="module")
def d121() -> nn.Module:
    return seeded("densenet121", 2)


@pytest.fixture(scope="module")
def d121_features(d121, images) -> torch.Tensor:
    return features_of(d121, images)


@pytest.fixture(scope="module")
def r18_features(r18, images) -> torch.Tensor:
    return features_of(r18, images)


@pytest.fixture(autouse=True)
def native_convs(request):
    """oneDNN re-packs weights on every call: for 32 px ResNet batches the native kernels are ~10x
    cheaper on CPU. DenseNet tests keep oneDNN; the numbers agree either way."""
    saved = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = "densenet" in request.node.name or "lightning" in request.node.name
    yield
    torch.backends.mkldnn.enabled = saved


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def features_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled features straight from the torchvision model (classifier replaced by identity)."""
    head = "fc" if hasattr(model, "fc") else "classifier"
    original = getattr(model, head)
    setattr(model, head, nn.Identity())
    try:
        with torch.no_grad():
            return model(x)
    finally:
        setattr(model, head, original)


def encoder_features(arch: str, path: Path, fmt: str, x: torch.Tensor, trust: bool = False, with_split: bool = False):
    backbone, split = load_backbone(arch, path, FORMATS[fmt], trust)
    trunk, pool = backbone.trunk.eval(), backbone.pool
    with torch.no_grad():
        features = pool(trunk(x))
    return (features, split) if with_split else features


def backbone_state(model: nn.Module, head: str) -> OrderedDict:
    return OrderedDict((k, v) for k, v in model.state_dict().items() if not k.startswith(head + "."))


def prefixed(state: dict, prefix: str) -> OrderedDict:
    return OrderedDict((prefix + k, v) for k, v in state.items())


def linear_state(n_in: int, n_out: int, prefix: str, bias: bool = True) -> dict:
    layer = nn.Linear(n_in, n_out, bias=bias)
    return {prefix + k: v.detach().clone() for k, v in layer.state_dict().items()}


def mlp_state(n_in: int, n_hidden: int, n_out: int, prefix: str) -> dict:
    return {**linear_state(n_in, n_hidden, prefix + "0."), **linear_state(n_hidden, n_out, prefix + "2.")}


def optimizer_state() -> dict:
    params = [nn.Parameter(torch.zeros(3))]
    return torch.optim.SGD(params, lr=0.03, momentum=0.9).state_dict()


def moco_checkpoint(model: nn.Module, head: str, mlp: bool, root: str, dim: int = 128, arch: str = "resnet18",
                    with_key_encoder: bool = True) -> dict:
    """facebookresearch/moco (and MoCo-CXR, PCL) save format: DDP state of MoCo(encoder_q, encoder_k, queue)."""
    n_in = model.fc.in_features if head == "fc" else model.classifier.in_features
    head_state = mlp_state(n_in, n_in, dim, f"{head}.") if mlp else linear_state(n_in, dim, f"{head}.")
    query = {**backbone_state(model, head), **head_state}
    state = OrderedDict(prefixed(query, root + "encoder_q."))
    if with_key_encoder:
        state.update(prefixed(query, root + "encoder_k."))  # the key encoder: same keys (values shared here)
    state[root + "queue"] = nn.functional.normalize(torch.randn(dim, QUEUE), dim=0)
    state[root + "queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {"epoch": 800, "arch": arch, "state_dict": state, "optimizer": optimizer_state()}


def swav_state(model: nn.Module, prototypes: tuple[int, ...]) -> OrderedDict:
    """facebookresearch/swav released file: raw DDP state dict of the SwAV ResNet."""
    state = prefixed(backbone_state(model, "fc"), "module.")
    projection = nn.Sequential(nn.Linear(512, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 128))
    state.update(prefixed(projection.state_dict(), "module.projection_head."))
    if len(prototypes) == 1:
        state["module.prototypes.weight"] = torch.randn(prototypes[0], 128)
    else:
        for index, k in enumerate(prototypes):
            state[f"module.prototypes.prototypes{index}.weight"] = torch.randn(k, 128)
    return state


def pycontrast_checkpoint(model: nn.Module, head: str, jigsaw: str | None) -> dict:
    """HobbitLong/PyContrast ContrastTrainer.save: {'model', 'contrast', 'optimizer', 'epoch'[, 'model_ema']}."""
    encoder = backbone_state(model, "fc")  # PyContrast's ResNet has no fc
    heads = mlp_state(512, 512, 128, "head.") if head == "mlp" else linear_state(512, 128, "head.0.")
    if jigsaw == "linear":
        heads.update({**linear_state(512, 128, "head_jig.fc1."), **linear_state(128 * 9, 128, "head_jig.fc2.")})
    elif jigsaw == "mlp":
        heads.update({**mlp_state(512, 512, 128, "head_jig.fc1."), **linear_state(128 * 9, 128, "head_jig.fc2.")})
    model_state = {**prefixed(encoder, "encoder."), **heads}
    return {"model": prefixed(model_state, "module."), "contrast": {"memory": torch.randn(16, 128)},
            "optimizer": optimizer_state(), "epoch": 200, "model_ema": OrderedDict(model_state)}


def mimic_lightning_checkpoint(model: nn.Module) -> dict:
    """CovidPrognosis MoCoModule (pytorch-lightning 1.x) checkpoint, densenet121, feature_dim 128."""
    moco = moco_checkpoint(model, "classifier", mlp=False, root="model.", arch="densenet121")["state_dict"]
    return {"epoch": 49, "global_step": 123, "pytorch-lightning_version": "1.1.6", "state_dict": moco,
            "callbacks": {}, "optimizer_states": [optimizer_state()],
            "lr_schedulers": [{"last_epoch": 49, "base_lrs": [0.1], "_step_count": 50}],
            "hparams_name": "kwargs", "hyper_parameters": {"arch": "densenet121", "feature_dim": 128,
                                                           "queue_size": 65536, "learning_rate": 0.1}}


# -- the formats ---------------------------------------------------------------------------------------
CASES = {
    "moco-v2": lambda m: moco_checkpoint(m, "fc", mlp=True, root="module.", arch="resnet50", with_key_encoder=False),
    "moco-v1": lambda m: moco_checkpoint(m, "fc", mlp=False, root="module.", arch="resnet50"),
    "pcl": lambda m: moco_checkpoint(m, "fc", mlp=True, root="module.", arch="resnet50"),
    "moco-cxr-resnet": lambda m: moco_checkpoint(m, "fc", mlp=True, root="module."),
    "swav": lambda m: swav_state(m, (3000,)),
    "swav-multi-prototypes": lambda m: swav_state(m, (300, 300, 300)),
    "pycontrast-jigsaw": lambda m: pycontrast_checkpoint(m, "mlp", "mlp"),  # InfoMin
    "pycontrast": lambda m: pycontrast_checkpoint(m, "linear", None),  # InsDis
    "simclr-v1-converted": lambda m: {"state_dict": OrderedDict(m.state_dict())},
    "byol-converted": lambda m: OrderedDict((k, v) for k, v in m.state_dict().items() if "tracked" not in k),
}


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_resnet_formats_load_strictly_with_identical_features(fmt, r18, r18_features, images, tmp_path):
    path = tmp_path / f"{fmt}.pth.tar"
    torch.save(CASES[fmt](r18), path)
    got = encoder_features("resnet18", path, fmt, images)
    assert torch.allclose(got, r18_features, atol=1e-5)


def test_pirl_layout_with_linear_jigsaw_head(r18, r18_features, images, tmp_path):
    path = tmp_path / "PIRL.pth"
    torch.save(pycontrast_checkpoint(r18, "linear", "linear"), path)
    assert torch.allclose(encoder_features("resnet18", path, "pycontrast-jigsaw", images), r18_features, atol=1e-5)


def test_byol_converted_with_state_dict_wrapper(r18, r18_features, images, tmp_path):
    path = tmp_path / "byol.pth"  # ssl-transfer convert_byol: {'state_dict': full resnet state}
    torch.save({"state_dict": r18.state_dict()}, path)
    assert torch.allclose(encoder_features("resnet18", path, "byol-converted", images), r18_features, atol=1e-5)


def test_densenet_formats(d121, d121_features, images, tmp_path):
    cxr = tmp_path / "d1w-00001.pth.tar"
    torch.save(moco_checkpoint(d121, "classifier", mlp=True, root="module.", arch="densenet121"), cxr)
    mimic = tmp_path / "mimic-chexpert_lr_0.1_bs_128_fd_128_qs_65536.pt"
    torch.save(mimic_lightning_checkpoint(d121), mimic)
    assert torch.allclose(encoder_features("densenet121", cxr, "moco-cxr-densenet", images), d121_features, atol=1e-5)
    features, split = encoder_features("densenet121", mimic, "mimic-chexpert", images, with_split=True)
    assert torch.allclose(features, d121_features, atol=1e-5)
    assert set(split.dropped) == {"projection head of the query encoder", "key (momentum) encoder",
                                  "queue and its pointer"}
    assert len(split.dropped["projection head of the query encoder"]) == 2  # classifier.weight, .bias


# -- wrong layouts ---------------------------------------------------------------------------------------
def _expect_error(path: Path, fmt: str, *fragments: str, arch: str = "resnet18") -> str:
    with pytest.raises(CheckpointError) as info:
        load_backbone(arch, path, FORMATS[fmt])
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_wrong_container_is_named(r18, tmp_path):
    path = tmp_path / "swav.pth"
    torch.save(swav_state(r18, (3000,)), path)
    _expect_error(path, "moco-v2", "does not have the 'moco-v2' layout", "['state_dict']")


def test_linear_head_in_mlp_format_is_rejected(r18, tmp_path):
    path = tmp_path / "v1.pth"
    torch.save(moco_checkpoint(r18, "fc", mlp=False, root="module."), path)
    _expect_error(path, "moco-v2", "projection head of the query encoder", "{bias, weight}", "0.weight")


def test_missing_and_unexpected_backbone_keys_are_listed(r18, tmp_path):
    checkpoint = moco_checkpoint(r18, "fc", mlp=True, root="module.")
    del checkpoint["state_dict"]["module.encoder_q.layer4.1.bn2.weight"]
    checkpoint["state_dict"]["module.encoder_q.layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(checkpoint, path)
    _expect_error(path, "moco-v2", "missing keys (1): layer4.1.bn2.weight", "unexpected keys (1): layer5.0.conv1.weight")


def test_keys_outside_the_format_are_unexpected(d121, tmp_path):
    checkpoint = mimic_lightning_checkpoint(d121)
    checkpoint["state_dict"] = OrderedDict((k.replace("model.", "", 1), v) for k, v in checkpoint["state_dict"].items())
    path = tmp_path / "mimic.pt"
    torch.save(checkpoint, path)
    _expect_error(path, "mimic-chexpert", "no key starts with the backbone prefix 'model.encoder_q.'",
                  "unexpected keys outside 'model.encoder_q.'", "encoder_q.features.conv0.weight", arch="densenet121")


def test_required_head_absent_is_an_error(r18, tmp_path):
    state = swav_state(r18, (3000,))
    del state["module.prototypes.weight"]
    path = tmp_path / "swav.pth"
    torch.save(state, path)
    _expect_error(path, "swav", "prototypes ('module.prototypes.*') is missing")


def test_wrong_architecture_reports_shape_mismatch(r18, tmp_path):
    path = tmp_path / "moco.pth"
    torch.save(moco_checkpoint(r18, "fc", mlp=True, root="module."), path)
    _expect_error(path, "moco-v2", "do not fit the architecture", "missing keys", arch="resnet50")


# -- files that need full unpickling -------------------------------------------------------------------------
def _fake_module(name: str, **members) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in members.items():
        value.__module__ = name
        value.__qualname__ = key
        setattr(module, key, value)
    return module


def _dump_with_fake_modules(obj_factory, modules: dict[str, types.ModuleType], dump) -> None:
    """Pickle objects of classes living in modules that will not exist when the file is read."""
    parents = {name.split(".")[0] for name in modules}
    saved = {name: sys.modules.get(name) for name in [*modules, *parents]}
    try:
        for parent in parents:
            sys.modules.setdefault(parent, types.ModuleType(parent))
        sys.modules.update(modules)
        dump(obj_factory())
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def test_lightning_file_with_python_objects_needs_trust(d121, d121_features, images, tmp_path):
    class AttributeDict(dict):
        pass
    fake = {"pytorch_lightning.utilities.parsing": _fake_module("pytorch_lightning.utilities.parsing",
                                                                AttributeDict=AttributeDict)}
    path = tmp_path / "mimic-chexpert_lr_0.01_bs_128_fd_128_qs_65536.pt"

    def make():
        checkpoint = mimic_lightning_checkpoint(d121)
        checkpoint["hyper_parameters"] = AttributeDict(checkpoint["hyper_parameters"])
        return checkpoint
    _dump_with_fake_modules(make, fake, lambda obj: torch.save(obj, path))
    message = _expect_error(path, "mimic-chexpert", "pytorch_lightning.utilities.parsing.AttributeDict",
                            "--trust-checkpoint", arch="densenet121")
    assert "weights_only=True" in message
    got = encoder_features("densenet121", path, "mimic-chexpert", images, trust=True)
    assert torch.allclose(got, d121_features, atol=1e-5)


# -- BYOL haiku pickle -----------------------------------------------------------------------------------------
def haiku_checkpoint(model: torchvision.models.ResNet) -> dict:
    """deepmind-research byol checkpoint layout for a torchvision ResNet (names as haiku creates them)."""
    params: dict[str, dict[str, np.ndarray]] = {}
    state: dict[str, dict[str, np.ndarray]] = {}
    sd = {k: v.numpy() for k, v in model.state_dict().items()}

    def add_conv(haiku: str, torch_name: str) -> None:
        params[f"res_net18/~/{haiku}"] = {"w": sd[f"{torch_name}.weight"].transpose(2, 3, 1, 0).copy()}

    def add_bn(haiku: str, torch_name: str) -> None:
        shape = (1, 1, 1, -1)
        params[f"res_net18/~/{haiku}"] = {"scale": sd[f"{torch_name}.weight"].reshape(shape),
                                          "offset": sd[f"{torch_name}.bias"].reshape(shape)}
        for kind, buffer in (("mean", "running_mean"), ("var", "running_var")):
            average = sd[f"{torch_name}.{buffer}"].reshape(shape)
            state[f"res_net18/~/{haiku}/~/{kind}_ema"] = {"average": average, "hidden": average.copy(),
                                                           "counter": np.array(1000, dtype=np.int32)}
    add_conv("initial_conv", "conv1")
    add_bn("initial_batchnorm", "bn1")
    for group in range(4):
        for block in range(2):
            base, torch_base = f"block_group_{group}/~/block_{block}/~/", f"layer{group + 1}.{block}."
            for k in range(2):
                add_conv(base + f"conv_{k}", torch_base + f"conv{k + 1}")
                add_bn(base + f"batchnorm_{k}", torch_base + f"bn{k + 1}")
            if f"{torch_base}downsample.0.weight" in sd:
                add_conv(base + "shortcut_conv", torch_base + "downsample.0")
                add_bn(base + "shortcut_batchnorm", torch_base + "downsample.1")
    params["classifier"] = {"w": np.random.randn(512, 1000).astype(np.float32), "b": np.zeros(1000, np.float32)}
    for mlp in ("projector", "predictor"):
        params[f"{mlp}/~/linear"] = {"w": np.random.randn(512, 64).astype(np.float32), "b": np.zeros(64, np.float32)}
        params[f"{mlp}/~/batch_norm"] = {"scale": np.ones((1, 64), np.float32), "offset": np.zeros((1, 64), np.float32)}
        params[f"{mlp}/~/linear_1"] = {"w": np.random.randn(64, 32).astype(np.float32)}
        state[f"{mlp}/~/batch_norm/~/mean_ema"] = {"average": np.zeros((1, 64), np.float32)}
    return {"params": params, "state": state}


def test_byol_haiku_pickle_converts_only_with_trust(r18, r18_features, images, tmp_path):
    class FlatMapping(dict):
        def __reduce__(self):
            return (type(self), (dict(self),))

    class _ByolExperimentState(NamedTuple):
        online_params: object
        target_params: object
        online_state: object
        target_state: object
        opt_state: object
    fake = {"haiku._src.data_structures": _fake_module("haiku._src.data_structures", FlatMapping=FlatMapping),
            "byol.byol_experiment": _fake_module("byol.byol_experiment", _ByolExperimentState=_ByolExperimentState)}
    parts = haiku_checkpoint(r18)
    path = tmp_path / "pretrain_res50x1.pkl"

    def make():
        params = FlatMapping({k: FlatMapping(v) for k, v in parts["params"].items()})
        state = FlatMapping({k: FlatMapping(v) for k, v in parts["state"].items()})
        experiment = _ByolExperimentState(params, params, state, state, ())
        return {"experiment_state": experiment, "step": 300000, "rng": np.zeros(2, np.uint32)}

    def dump(obj):
        with open(path, "wb") as handle:
            pickle.dump(obj, handle, protocol=2)  # byol's checkpointer: dill.dump(..., protocol=2)
    _dump_with_fake_modules(make, fake, dump)
    _expect_error(path, "byol-haiku", "full unpickling", "--trust-checkpoint")
    got = encoder_features("resnet18", path, "byol-haiku", images, trust=True)
    assert torch.allclose(got, r18_features, atol=1e-5)


def test_legacy_non_zip_torch_files_load_weights_only(r18, r18_features, images, tmp_path):
    """Checkpoints from 2020 (torch < 1.6) use the legacy, non-zip serialisation."""
    path = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    torch.save(moco_checkpoint(r18, "fc", mlp=True, root="module."), path, _use_new_zipfile_serialization=False)
    assert torch.allclose(encoder_features("resnet18", path, "moco-v2", images), r18_features, atol=1e-5)


def test_garbage_file_is_a_clear_error(tmp_path):
    path = tmp_path / "swav_800ep_pretrain.pth.tar"
    path.write_bytes(b"<html>Dropbox sign-in page</html>")
    _expect_error(path, "swav", "not a plain PyTorch weights file, or it is corrupt")
