"""Encoders registered at run time (``cli.py pretrain``), kept in a JSON file and loaded with the zoo.

The file is ``$MEDTRANSFER_CACHE/local_encoders.json`` (default ``~/.cache/medtransfer``): one
entry per name with the architecture, the checkpoint path and sha256, the key prefix of the
trunk's weights in the checkpoint, the preprocessing and the provenance (for pretrained encoders
its ``pretraining`` block). :func:`register_local_encoder` writes an entry and registers it in
the live :data:`ENCODERS` registry, so every evaluator can use it at once; :mod:`pretrained.zoo`
loads the file when the registry is first used. A broken file or a missing checkpoint never
breaks ``cli.py models``: the first is logged and skipped, the second lists the encoder as
absent, and building it raises one clear error.

Checkpoint layout read here: ``{"state_dict": {...}}`` (or a bare state dict) whose keys are
``<key_prefix><trunk key>`` plus ``pool.<key>`` for pooling layers with parameters.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import torch

from pretrained.checkpoints import MissingWeightsError, sha256_file
from pretrained.encoder import Encoder, EncoderSpec, LoadOptions, WeightsStatus
from pretrained.errors import CheckpointError
from pretrained.preprocessing import Preprocessing
from pretrained.registry import ENCODERS

log = logging.getLogger(__name__)

REGISTRY_FILE = "local_encoders.json"
ORIGIN = "local registry"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def local_registry_path() -> Path:
    return Path(os.environ.get("MEDTRANSFER_CACHE", "~/.cache/medtransfer")).expanduser() / REGISTRY_FILE


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of the registry file between processes (POSIX; no-op elsewhere)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_local_registry(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The entries of the registry file ({} when absent); raises ValueError when it is not valid JSON."""
    path = path or local_registry_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"local encoder registry {path} is unreadable ({error}); fix or delete it") from None
    if not isinstance(data, dict) or not isinstance(data.get("encoders", {}), dict):
        raise ValueError(f"local encoder registry {path} is not a {{'encoders': {{...}}}} object; fix or delete it")
    return data.get("encoders", {})


def _write_local_registry(entries: dict[str, dict[str, Any]], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": 1, "encoders": entries}, indent=2, sort_keys=True))
    os.replace(tmp, path)


def architecture_skeleton(arch: str) -> Encoder:
    """A randomly initialised encoder of ``arch`` to load weights into.

    Uses the registered random twin (``<arch>-random``, or any random-init encoder of that
    architecture), else a torchvision architecture of that name.
    """
    candidates = [f"{arch}-random"] + [name for name, spec in ENCODERS.items()
                                       if spec.architecture == arch and spec.kind == "random"]
    for name in candidates:
        if name in ENCODERS and ENCODERS.get(name).kind == "random":
            return ENCODERS.get(name).build(LoadOptions())
    from pretrained.architectures import torchvision_backbone
    from pretrained.torchvision_zoo import IMAGENET_PREPROCESSING
    try:
        trunk, pool, dim = torchvision_backbone(arch)
    except (ValueError, AttributeError):
        raise CheckpointError(f"architecture '{arch}' is unknown: no random-init encoder of it is registered "
                              f"and torchvision has no such model") from None
    return Encoder(arch, trunk, pool, dim, IMAGENET_PREPROCESSING, {"source": "random-init", "architecture": arch})


def load_encoder_checkpoint(name: str, arch: str, checkpoint: str | Path, key_prefix: str,
                            preprocessing: dict[str, Any], provenance: dict[str, Any],
                            expected_sha256: str | None = None) -> Encoder:
    """Build ``arch`` and load ``checkpoint`` strictly into its trunk (keys under ``key_prefix``) and pool."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise MissingWeightsError(path.name, [path.parent],
                                  f"The checkpoint of encoder '{name}' is gone. Rerun the pretraining that made it, "
                                  f"or remove the entry from {local_registry_path()}.")
    digest = sha256_file(path)
    if expected_sha256 and digest != expected_sha256:
        raise CheckpointError(f"checkpoint {path} of encoder '{name}' changed since it was registered "
                              f"(sha256 {digest[:12]}..., registered {expected_sha256[:12]}...); "
                              f"rerun the pretraining or register the file again")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {path} of encoder '{name}': {type(error).__name__}: {error}") from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds no state dict (found {type(loaded).__name__})")
    trunk_state = {key[len(key_prefix):]: value for key, value in state.items() if key.startswith(key_prefix)}
    pool_state = {key[5:]: value for key, value in state.items()
                  if key.startswith("pool.") and not key.startswith(key_prefix)}
    leftover = sorted(set(state) - {key_prefix + k for k in trunk_state} - {f"pool.{k}" for k in pool_state})
    if leftover:
        raise CheckpointError(f"checkpoint {path} has keys outside '{key_prefix}*' and 'pool.*': {leftover[:10]}; "
                              f"check the key prefix")
    encoder = architecture_skeleton(arch)
    for part, part_state in (("trunk", trunk_state), ("pool", pool_state)):
        module = getattr(encoder, part)
        result = module.load_state_dict(part_state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(f"checkpoint {path} does not fit a {arch} {part}: missing {result.missing_keys[:10]}, "
                                  f"unexpected {result.unexpected_keys[:10]}")
    encoder.name = name
    encoder.preprocessing = preprocessing_from_dict(preprocessing)
    encoder.provenance = {"source": "local", "architecture": arch, "file": str(path), "key_prefix": key_prefix,
                          **provenance, "weights_sha256": digest}
    return encoder.eval()


def preprocessing_from_dict(data: dict[str, Any]) -> Preprocessing:
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
    try:
        return Preprocessing(**values)
    except TypeError as error:
        raise CheckpointError(f"bad preprocessing {data}: {error}") from None


def _status(path: str) -> WeightsStatus:
    if Path(path).is_file():
        return WeightsStatus(True, path, path)
    return WeightsStatus(False, f"missing {path}", how_to_get="rerun the pretraining that made it")


def _spec(name: str, entry: dict[str, Any]) -> EncoderSpec:
    pretraining = entry.get("provenance", {}).get("pretraining")
    if pretraining:
        description = (f"{pretraining.get('method')} on {pretraining.get('dataset')} from {pretraining.get('init')}, "
                       f"{pretraining.get('epochs')} epochs at {pretraining.get('image_size')} px")
    else:
        description = entry.get("description", f"{entry['arch']} from {entry['checkpoint']}")
    return EncoderSpec(
        name=name, architecture=entry["arch"], feature_dim=int(entry["feature_dim"]),
        build=lambda options, entry=entry: load_encoder_checkpoint(
            name, entry["arch"], entry["checkpoint"], entry["key_prefix"], entry["preprocessing"],
            entry.get("provenance", {}), entry.get("checkpoint_sha256")),
        kind=entry.get("kind", "in-domain" if pretraining else "user"), description=description,
        licence=entry.get("licence", "as the data it was trained on"),
        weights_status=lambda options, path=entry["checkpoint"]: _status(path))


def register_local_encoder(name: str, arch: str, checkpoint: str | Path, key_prefix: str,
                           preprocessing: dict[str, Any], provenance: dict[str, Any], *,
                           feature_dim: int | None = None, kind: str | None = None) -> EncoderSpec:
    """Record an encoder in the local registry file and register it now; returns its spec.

    Raises ValueError for a bad name or one taken by an encoder that is not local.
    """
    if not _NAME.match(name):
        raise ValueError(f"encoder name '{name}' must be lowercase letters, digits, '-', '.', '_' "
                         f"(e.g. resnet18-simclr-mydata)")
    if name in ENCODERS and not ENCODERS.origin(name).startswith(ORIGIN):
        raise ValueError(f"encoder name '{name}' is taken by {ENCODERS.origin(name)}; choose another --name")
    path = Path(checkpoint).expanduser().resolve()
    if feature_dim is None:
        feature_dim = architecture_skeleton(arch).feature_dim
    entry = {"arch": arch, "checkpoint": str(path), "checkpoint_sha256": sha256_file(path), "key_prefix": key_prefix,
             "preprocessing": dict(preprocessing), "provenance": dict(provenance), "feature_dim": int(feature_dim),
             "registered": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if kind:
        entry["kind"] = kind
    registry_path = local_registry_path()
    with _locked(registry_path):
        entries = read_local_registry(registry_path)
        entries[name] = json.loads(json.dumps(entry, default=str))
        _write_local_registry(entries, registry_path)
    if name in ENCODERS:
        ENCODERS.remove(name)
    spec = _spec(name, entries[name])
    ENCODERS.add(name, spec, origin=f"{ORIGIN} ({registry_path})")
    return spec


def unregister_local_encoder(name: str) -> None:
    """Remove ``name`` from the registry file and the live registry (the checkpoint file stays)."""
    registry_path = local_registry_path()
    with _locked(registry_path):
        entries = read_local_registry(registry_path)
        if name not in entries:
            raise ValueError(f"'{name}' is not in the local encoder registry {registry_path}")
        del entries[name]
        _write_local_registry(entries, registry_path)
    if name in ENCODERS and ENCODERS.origin(name).startswith(ORIGIN):
        ENCODERS.remove(name)


def load_local_encoders() -> None:
    """Register every entry of the local registry file (called while the encoder registry loads)."""
    path = local_registry_path()
    try:
        entries = read_local_registry(path)
    except ValueError as error:
        log.warning("%s", error)
        return
    for name, entry in entries.items():
        try:
            ENCODERS.add(name, _spec(name, entry), origin=f"{ORIGIN} ({path})")
        except Exception as error:  # one bad entry must not hide the others
            log.warning("skipping local encoder '%s' from %s: %s: %s", name, path, type(error).__name__, error)
