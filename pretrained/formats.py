"""Upstream checkpoint formats: one explicit key map per format.

A :class:`CheckpointFormat` says where the state dict sits in the file (``container``), which key
prefix holds the backbone (``prefix``, stripped), and which other keys the format is known to
carry and must drop (:class:`DropGroup`: projection heads, queues, key encoders, jigsaw heads).
:func:`split_state` sorts every key into "backbone" or "dropped"; a key that is neither, a required
head that is absent, or a head with other keys than the format's is a layout error. The backbone
keys are then loaded **strictly** (:func:`load_backbone_state`), so a missing or unexpected key also
raises :class:`~pretrained.errors.CheckpointError` naming the keys and the format.

Layouts follow the upstream code (see docs/encoders.md and PROTOCOLS.md section 5).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from pretrained.errors import CheckpointError

log = logging.getLogger(__name__)

RAW = ""  # container value meaning "the file itself is the state dict"
LIST_LIMIT = 12  # keys listed per category in error messages


@dataclass(frozen=True)
class DropGroup:
    """Keys a format carries besides the backbone, dropped before loading.

    Args:
        label: what they are ("MLP projection head", "key encoder", "queue").
        namespace: every key starting with this prefix belongs to the group.
        alternatives: the exact key sets (relative to ``namespace``) the group may have; ``()``
            accepts any keys under the namespace (e.g. a whole key encoder).
        required: the format always has this group; its absence is a layout error.
    """

    label: str
    namespace: str
    alternatives: tuple[frozenset[str], ...] = ()
    required: bool = False

    def check(self, keys: list[str]) -> str | None:
        """``None`` when ``keys`` (full keys in the namespace) fit the group, else the problem."""
        if not keys:
            return f"{self.label} ('{self.namespace}*') is missing" if self.required else None
        if not self.alternatives:
            return None
        relative = frozenset(key[len(self.namespace):] for key in keys)
        if relative in self.alternatives:
            return None
        expected = " or ".join("{" + ", ".join(sorted(a)) + "}" for a in self.alternatives)
        return (f"{self.label} ('{self.namespace}*') has keys {{{', '.join(sorted(relative))}}}, "
                f"expected {expected}")


@dataclass(frozen=True)
class CheckpointFormat:
    """Where the backbone sits in an upstream checkpoint and what else the file holds.

    Args:
        name: format id (recorded in provenance).
        description: the upstream source of the layout.
        containers: candidate keys holding the state dict, tried in order; ``RAW`` = the top level.
        prefix: backbone key prefix, stripped (``"module.encoder_q."``); ``""`` for none.
        drops: the other key groups the format carries (see :class:`DropGroup`).
        ignore_outside_prefix: drop every key outside ``prefix`` instead of calling it unexpected
            (user checkpoints through ``local``; never for the upstream formats).
        needs_trust: the file can only be read by full unpickling (``--trust-checkpoint``).
    """

    name: str
    description: str
    containers: tuple[str, ...]
    prefix: str
    drops: tuple[DropGroup, ...] = ()
    ignore_outside_prefix: bool = False
    needs_trust: bool = False
    notes: str = field(default="", compare=False)


def _keys(*names: str) -> frozenset[str]:
    return frozenset(names)


def _linear(name: str) -> frozenset[str]:
    return _keys(f"{name}weight", f"{name}bias")


def _mlp(prefix: str = "") -> frozenset[str]:
    """``Sequential(Linear, ReLU, Linear)``: keys 0.* and 2.*."""
    return _linear(f"{prefix}0.") | _linear(f"{prefix}2.")


LINEAR_HEAD = _linear("")
MLP_HEAD = _mlp()


def moco_drops(root: str, head: str, head_alternatives: tuple[frozenset[str], ...]) -> tuple[DropGroup, ...]:
    """MoCo-style checkpoints: query-encoder head (required), key encoder and queue (tolerated)."""
    return (
        DropGroup("projection head of the query encoder", f"{root}encoder_q.{head}.", head_alternatives, required=True),
        DropGroup("key (momentum) encoder", f"{root}encoder_k."),
        DropGroup("queue and its pointer", f"{root}queue", (_keys(""), _keys("", "_ptr"))),
    )


SWAV_PROJECTION = _keys("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                        "1.num_batches_tracked", "3.weight", "3.bias")
PYCONTRAST_HEAD = (_keys("0.weight", "0.bias"), _mlp())  # head='linear' or 'mlp' (Normalize has no params)
PYCONTRAST_JIGSAW = (_linear("fc1.") | _linear("fc2."), _mlp("fc1.") | _linear("fc2."))

FORMATS: dict[str, CheckpointFormat] = {}


def _add(fmt: CheckpointFormat) -> CheckpointFormat:
    FORMATS[fmt.name] = fmt
    return fmt


_add(CheckpointFormat(
    "moco-v2", "facebookresearch/moco main_moco.py --mlp: {epoch, arch, state_dict, optimizer}",
    ("state_dict",), "module.encoder_q.", moco_drops("module.", "fc", (MLP_HEAD,))))
_add(CheckpointFormat(
    "moco-v1", "facebookresearch/moco main_moco.py (linear head): {epoch, arch, state_dict, optimizer}",
    ("state_dict",), "module.encoder_q.", moco_drops("module.", "fc", (LINEAR_HEAD,))))
_add(CheckpointFormat(
    "pcl", "salesforce/PCL main_pcl.py (MoCo layout; v1 linear head, v2 MLP head)",
    ("state_dict",), "module.encoder_q.", moco_drops("module.", "fc", (LINEAR_HEAD, MLP_HEAD))))
_add(CheckpointFormat(
    "moco-cxr-resnet", "stanfordmlgroup/MoCo-CXR main_moco.py --mlp: {epoch, arch, state_dict, optimizer}, "
    "full MoCo state with encoder_k and queue", ("state_dict",), "module.encoder_q.",
    moco_drops("module.", "fc", (MLP_HEAD,))))
_add(CheckpointFormat(
    "moco-cxr-densenet", "stanfordmlgroup/MoCo-CXR main_moco.py with densenet121 (classifier head: linear, "
    "or MLP with --mlp; which one d1w used is unverified)", ("state_dict",), "module.encoder_q.",
    moco_drops("module.", "classifier", (LINEAR_HEAD, MLP_HEAD))))
_add(CheckpointFormat(
    "mimic-chexpert", "facebookresearch/CovidPrognosis MoCoModule Lightning checkpoint: state_dict keys "
    "model.encoder_q.* (DenseNet-121, classifier Linear(1024, 128)), model.encoder_k.*, model.queue",
    ("state_dict",), "model.encoder_q.", moco_drops("model.", "classifier", (LINEAR_HEAD, MLP_HEAD))))
_add(CheckpointFormat(
    "swav", "facebookresearch/swav released file: raw state dict, module.* with projection_head and prototypes",
    (RAW,), "module.", (
        DropGroup("projection head", "module.projection_head.", (SWAV_PROJECTION,), required=True),
        DropGroup("prototypes", "module.prototypes.", (_keys("weight"),), required=True))))
_add(CheckpointFormat(
    "swav-multi-prototypes", "facebookresearch/swav DeepCluster-v2 / SeLa-v2 files: raw module.* state dict, "
    "projection head and one or several prototype layers", (RAW,), "module.", (
        DropGroup("projection head", "module.projection_head.", (SWAV_PROJECTION,), required=True),
        DropGroup("prototypes", "module.prototypes.", required=True))))
_add(CheckpointFormat(
    "pycontrast-jigsaw", "HobbitLong/PyContrast RGBMultiHeads (InfoMin, PIRL): {'model': state dict, ...} with "
    "module.encoder.* (no fc), module.head.* and the jigsaw head module.head_jig.*", ("model",), "module.encoder.", (
        DropGroup("projection head", "module.head.", PYCONTRAST_HEAD, required=True),
        DropGroup("jigsaw head", "module.head_jig.", PYCONTRAST_JIGSAW, required=True))))
_add(CheckpointFormat(
    "pycontrast", "HobbitLong/PyContrast RGBSingleHead (InsDis): {'model': state dict, ...} with "
    "module.encoder.* and module.head.*", ("model",), "module.encoder.", (
        DropGroup("projection head", "module.head.", PYCONTRAST_HEAD, required=True),)))
_add(CheckpointFormat(
    "simclr-v1-converted", "tonylins/simclr-converter convert.py output: {'state_dict': torchvision ResNet-50 keys "
    "including the supervised head fc}", ("state_dict",), "", (
        DropGroup("supervised linear head", "fc.", (LINEAR_HEAD,), required=True),)))
_add(CheckpointFormat(
    "byol-converted", "BYOL converted to torchvision keys: chigur/byol-convert output (plain state dict, no "
    "num_batches_tracked) or ssl-transfer convert_byol ({'state_dict': ...}); fc = BYOL's online classifier",
    (RAW, "state_dict"), "", (DropGroup("online linear classifier", "fc.", (LINEAR_HEAD,), required=True),)))
_add(CheckpointFormat(
    "byol-haiku", "deepmind-research/byol checkpoint: dill pickle {experiment_state: _ByolExperimentState("
    "online_params, online_state, ...), step, rng}; converted in memory to torchvision keys",
    (RAW,), "", (DropGroup("online linear classifier", "fc.", (LINEAR_HEAD,), required=True),), needs_trust=True))


def local_format(key_prefix: str, head_namespaces: tuple[str, ...]) -> CheckpointFormat:
    """The format of a user checkpoint (``local``): keys under ``key_prefix`` are the backbone,
    the architecture's classifier (``head_namespaces``, relative to the prefix) is dropped when
    present, every key outside the prefix is ignored (and counted in provenance)."""
    drops = tuple(DropGroup("classifier head", key_prefix + head) for head in head_namespaces)
    return CheckpointFormat("local", f"user checkpoint, backbone prefix '{key_prefix}'",
                            (RAW, "state_dict", "model"), key_prefix, drops, ignore_outside_prefix=True)


# -- applying a format ------------------------------------------------------------------------------
def unwrap(checkpoint: Any, fmt: CheckpointFormat, source: str) -> dict[str, torch.Tensor]:
    """The state dict inside ``checkpoint`` according to ``fmt.containers``."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source}: expected a dict-like checkpoint for format '{fmt.name}', "
                              f"got {type(checkpoint).__name__}")
    for container in fmt.containers:
        candidate = checkpoint if container == RAW else checkpoint.get(container)
        if isinstance(candidate, Mapping) and candidate and all(
                isinstance(v, torch.Tensor) for v in candidate.values()):
            return dict(candidate)
    where = " or ".join("the top level" if c == RAW else f"['{c}']" for c in fmt.containers)
    top = ", ".join(sorted(map(str, checkpoint.keys()))[:LIST_LIMIT])
    raise CheckpointError(f"{source} does not have the '{fmt.name}' layout: no state dict of tensors at {where}. "
                          f"Top-level keys: {top or '(none)'}. Expected: {fmt.description}.")


@dataclass
class SplitState:
    """Result of :func:`split_state`: backbone keys (prefix stripped) and dropped keys per group."""

    backbone: dict[str, torch.Tensor]
    dropped: dict[str, list[str]]
    ignored: dict[str, torch.Tensor]  # keys outside the prefix (formats with ignore_outside_prefix only)


def split_state(state: Mapping[str, torch.Tensor], fmt: CheckpointFormat, source: str) -> SplitState:
    """Sort every key into backbone / a drop group; layout errors raise :class:`CheckpointError`."""
    grouped: dict[str, list[str]] = {group.label + "|" + group.namespace: [] for group in fmt.drops}
    backbone: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    ignored: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        group = next((g for g in fmt.drops if key.startswith(g.namespace)), None)
        if group is not None:
            grouped[group.label + "|" + group.namespace].append(key)
        elif key.startswith(fmt.prefix):
            backbone[key[len(fmt.prefix):]] = value
        elif fmt.ignore_outside_prefix:
            ignored[key] = value
        else:
            unexpected.append(key)
    problems = [p for g in fmt.drops if (p := g.check(grouped[g.label + "|" + g.namespace]))]
    if unexpected or problems or not backbone:
        details = []
        if not backbone:
            details.append(f"no key starts with the backbone prefix '{fmt.prefix}'")
        if unexpected:
            details.append(f"unexpected keys outside '{fmt.prefix}': {_listing(unexpected)}")
        details.extend(problems)
        raise CheckpointError(f"{source} does not have the '{fmt.name}' layout: " + "; ".join(details)
                              + f". Expected: {fmt.description}. Sample keys in the file: {_listing(list(state))}")
    dropped = {g.label: grouped[g.label + "|" + g.namespace] for g in fmt.drops if grouped[g.label + "|" + g.namespace]}
    if ignored:
        log.info("%s: ignoring %d keys outside prefix '%s' (e.g. %s)", source, len(ignored), fmt.prefix, list(ignored)[:3])
    return SplitState(backbone, dropped, ignored)


def load_backbone_state(module: nn.Module, backbone: Mapping[str, torch.Tensor], fmt: CheckpointFormat,
                        source: str) -> None:
    """``module.load_state_dict(backbone, strict=True)`` with a message naming missing/unexpected keys.

    ``num_batches_tracked`` buffers may be absent (converted checkpoints omit them; they do not
    change eval-mode features). Shape mismatches are reported the same way.
    """
    expected = module.state_dict()
    backbone = dict(backbone)
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in backbone:
            backbone[key] = expected[key].clone()
    missing = sorted(set(expected) - set(backbone))
    unexpected = sorted(set(backbone) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(backbone) if tuple(expected[k].shape) != tuple(backbone[k].shape))
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        if mismatched:
            parts.append("shape mismatches: " + _listing(
                [f"{k} file {tuple(backbone[k].shape)} vs model {tuple(expected[k].shape)}" for k in mismatched]))
        raise CheckpointError(f"{source}: after applying the '{fmt.name}' key map (prefix '{fmt.prefix}') the "
                              f"weights do not fit the architecture: " + "; ".join(parts)
                              + ". Check the encoder/architecture and the checkpoint format.")
    module.load_state_dict(backbone, strict=True)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:LIST_LIMIT])
    return shown + (f", ... ({len(keys) - LIST_LIMIT} more)" if len(keys) > LIST_LIMIT else "")


def fix_legacy_densenet_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old DenseNet files name ``norm.1``/``conv.2``; torchvision's own loader renames them."""
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    fixed = {}
    for key, value in state.items():
        match = pattern.match(key)
        fixed[match.group(1) + match.group(2) if match else key] = value
    return fixed
