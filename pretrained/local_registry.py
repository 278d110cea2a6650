"""``local`` encoders: any torchvision or timm architecture + a checkpoint file + a key prefix, no code.

Saved entries live in one JSON file, ``$MEDTRANSFER_CACHE/local_encoders.json`` (default
``~/.cache/medtransfer/local_encoders.json``), and are registered in ``ENCODERS`` whenever the
registry loads (:mod:`pretrained.zoo`). Two ways in:

- ``python cli.py models add NAME --arch resnet50 --checkpoint FILE --key-prefix module.encoder_q.``
  (or, from Python, :func:`register_local_encoder`, which the in-domain SSL trainer uses);
- ad hoc for one run: ``--model local:ARCH --checkpoint FILE --key-prefix P``
  (:func:`adhoc_local_encoder`, registered as ``local-<arch>-<hash>`` for that process).

Loading: the state dict is taken from the top level or ``['state_dict']`` / ``['model']``; keys
under the prefix are the backbone (prefix stripped), the architecture's classifier is dropped,
keys outside the prefix are ignored (counted in provenance), and the backbone loads strictly.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from benchmark.atomic import atomic_write_text
from benchmark.locks import file_lock
from pretrained.architectures import DENSENETS
from pretrained.backbones import Backbone, TimmTrunk, build_backbone, make_encoder
from pretrained.checkpoint_encoder import checkpoint_provenance, load_state
from pretrained.checkpoints import MissingWeightsError, sha256_file
from pretrained.encoder import Encoder, EncoderSpec, LoadOptions
from pretrained.errors import CheckpointError
from pretrained.formats import fix_legacy_densenet_keys, load_backbone_state, local_format
from pretrained.preprocessing import Preprocessing
from pretrained.registry import ENCODERS
from pretrained.weights_sources import WeightsSource, sources_status

log = logging.getLogger(__name__)

REGISTRY_FILE = "local_encoders.json"
REGISTRY_VERSION = 1
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
LOCAL_ORIGIN = "local registry"
ADHOC_ORIGIN = "local (ad hoc)"


def local_registry_path() -> Path:
    """``$MEDTRANSFER_CACHE/local_encoders.json`` (``~/.cache/medtransfer`` by default)."""
    return Path(os.environ.get("MEDTRANSFER_CACHE", "~/.cache/medtransfer")).expanduser() / REGISTRY_FILE


def load_local_entries(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Saved entries by name (empty when the file does not exist)."""
    path = path or local_registry_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"local encoder registry {path} is unreadable ({error}); fix or delete it") from None
    return dict(data.get("encoders", {}))


def register_local_encoder(name: str, arch: str, checkpoint: str | Path, key_prefix: str = "",
                           preprocessing: dict | Preprocessing | None = None, provenance: dict | None = None, *,
                           kind: str | None = None, description: str = "", licence: str = "",
                           feature_dim: int | None = None) -> EncoderSpec:
    """Save a local encoder in the JSON registry and register it now; returns its spec.

    Args:
        name: new encoder name (lowercase letters, digits, ``.``, ``_``, ``-``).
        arch: torchvision name (``resnet50``) or timm name (``timm:vit_small_patch16_224``).
        checkpoint: the weights file (stored as an absolute path).
        key_prefix: prefix of the backbone keys in the file (``"module.encoder_q."``, ``""``).
        preprocessing: :class:`Preprocessing` or its ``to_dict()``; ``None`` = the architecture's default.
        provenance: extra JSON-able facts copied into every record (training data, recipe, ...).
        kind: ``user`` (default) or ``in-domain`` (SSL trained by medtransfer), shown by ``cli.py models``.
        feature_dim: pooled feature size, when the caller knows it (else taken from the architecture).
    Raises:
        ValueError: bad name, name of a built-in encoder, missing file or unknown architecture.
    """
    check_new_local_name(name)
    checkpoint = Path(checkpoint).expanduser().resolve()
    if not checkpoint.is_file():
        raise ValueError(f"checkpoint file {checkpoint} does not exist")
    if isinstance(preprocessing, Preprocessing):
        preprocessing = preprocessing.to_dict()
    if preprocessing is not None:
        preprocessing_from_dict(preprocessing)  # validate now, not at first use
    entry = {"arch": arch, "checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
             "key_prefix": key_prefix, "preprocessing": preprocessing, "provenance": dict(provenance or {}),
             "kind": kind or "user", "description": description, "licence": licence,
             "feature_dim": int(feature_dim or feature_dim_of(arch)),
             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    json.dumps(entry)  # fail early on non-JSON provenance
    path = local_registry_path()
    with _locked(path):
        entries = load_local_entries(path)
        entries[name] = entry
        _write_entries(path, entries)
    if name in ENCODERS:
        ENCODERS.remove(name)
    spec = local_spec(name, entry)
    ENCODERS.add(name, spec, origin=LOCAL_ORIGIN)
    return spec


def remove_local_encoder(name: str) -> None:
    """Delete a saved local encoder (the checkpoint file is left alone)."""
    path = local_registry_path()
    key = name.strip().lower()
    with _locked(path):
        entries = load_local_entries(path)
        if key not in entries:
            raise ValueError(f"no local encoder '{name}' in {path}; saved: {', '.join(sorted(entries)) or 'none'}")
        del entries[key]
        _write_entries(path, entries)
    if key in ENCODERS and ENCODERS.origin(key) == LOCAL_ORIGIN:
        ENCODERS.remove(key)


def register_saved_local_encoders() -> None:
    """Register every saved entry (called when the encoder registry loads); bad entries are reported
    in ``ENCODERS.plugin_errors`` instead of breaking the tool."""
    path = local_registry_path()
    try:
        entries = load_local_entries(path)
    except ValueError as error:
        ENCODERS.plugin_errors["local registry"] = str(error)
        log.warning("%s", error)
        return
    for name, entry in entries.items():
        try:
            ENCODERS.add(name, local_spec(name, entry), origin=LOCAL_ORIGIN)
        except Exception as error:  # one bad entry must not break the registry
            ENCODERS.plugin_errors[f"local:{name}"] = f"{type(error).__name__}: {error}"
            log.warning("skipping local encoder '%s' from %s: %s", name, path, error)


def adhoc_local_encoder(arch: str, checkpoint: str | Path, key_prefix: str = "") -> str:
    """Register ``arch`` + ``checkpoint`` for this process (``--model local:ARCH``); returns its name,
    ``local-<arch>-<10 hex of sha256(file sha256, prefix)>`` so different files never share records."""
    path = Path(checkpoint).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"checkpoint file {path} does not exist")
    digest = hashlib.sha256(f"{sha256_file(path)}|{key_prefix}".encode()).hexdigest()[:10]
    slug = re.sub(r"[^a-z0-9]+", "-", arch.lower()).strip("-")
    name = f"local-{slug}-{digest}"
    if name not in ENCODERS:
        entry = {"arch": arch, "checkpoint": str(path), "key_prefix": key_prefix, "preprocessing": None,
                 "provenance": {}, "kind": "user", "description": f"ad hoc: {arch} from {path.name}",
                 "licence": "", "feature_dim": feature_dim_of(arch)}
        ENCODERS.add(name, local_spec(name, entry), origin=ADHOC_ORIGIN)
    return name


def local_spec(name: str, entry: dict[str, Any]) -> EncoderSpec:
    """EncoderSpec of a saved (or ad hoc) local entry."""
    for required in ("arch", "checkpoint"):
        if not entry.get(required):
            raise ValueError(f"local encoder '{name}' has no '{required}'")
    feature_dim = entry.get("feature_dim") or feature_dim_of(entry["arch"])
    sources = (WeightsSource(entry["checkpoint"], "local",
                             how_to_get=f"local file (registered in {local_registry_path()})"),)
    return EncoderSpec(
        name=name, architecture=entry["arch"], feature_dim=int(feature_dim),
        build=partial(build_local_encoder, name, dict(entry)), kind=entry.get("kind") or "user",
        description=entry.get("description") or f"{entry['arch']} from {Path(entry['checkpoint']).name}",
        licence=entry.get("licence", ""), weights_status=partial(sources_status, sources, encoder=name),
        extra={"weights_sources": sources, "local": dict(entry)})


def build_local_encoder(name: str, entry: dict[str, Any], options: LoadOptions) -> Encoder:
    """Load the entry's checkpoint into a fresh ``arch`` skeleton (strict after prefix + head filtering).

    The skeleton is the zoo's random-init encoder of ``arch`` when there is one (so every zoo
    architecture, e.g. EfficientNet-Lite, works), else a torchvision / timm build. Pooling layers
    with parameters load from ``pool.*`` keys outside the prefix.
    """
    path = Path(entry["checkpoint"])
    if not path.is_file():
        raise MissingWeightsError(path.name, [path.parent], f"local encoder '{name}' points at {path}; restore the "
                                  f"file or register it again (python cli.py models add ...)")
    expected_sha = entry.get("checkpoint_sha256")
    if expected_sha and sha256_file(path) != expected_sha:
        raise CheckpointError(f"checkpoint {path} of local encoder '{name}' changed since it was registered "
                              f"(sha256 {sha256_file(path)[:12]}..., registered {expected_sha[:12]}...); register it "
                              f"again (python cli.py models add ...) so records name the weights they used")
    arch, prefix = entry["arch"], entry.get("key_prefix", "")
    skeleton = local_skeleton(arch)
    fmt = local_format(prefix, skeleton.head_namespaces)
    split = load_state(path, fmt, options.trust_checkpoint)
    state = fix_legacy_densenet_keys(split.backbone) if arch in DENSENETS else split.backbone
    try:
        load_backbone_state(skeleton.loadable, state, fmt, str(path))
        if skeleton.pool.state_dict():
            pool_state = {k[len("pool."):]: v for k, v in split.ignored.items() if k.startswith("pool.")}
            load_backbone_state(skeleton.pool, pool_state, fmt, f"{path} (pool.*)")
    except CheckpointError as error:
        file_keys = [prefix + k for k in split.backbone] + list(split.ignored) + [k for v in split.dropped.values() for k in v]
        hint = suggest_prefix(file_keys, list(skeleton.loadable.state_dict()), prefix)
        raise CheckpointError(f"{error}{hint}") from None
    preprocessing = (preprocessing_from_dict(entry["preprocessing"]) if entry.get("preprocessing")
                     else skeleton.preprocessing)
    provenance = checkpoint_provenance(path, fmt, arch, split, licence=entry.get("licence", ""), key_prefix=prefix,
                                       local_encoder=True, **{k: v for k, v in entry.get("provenance", {}).items()
                                                              if k not in ("weights_sha256", "file", "format")})
    if skeleton.encoder is None:
        return make_encoder(name, skeleton, preprocessing, provenance)
    encoder = skeleton.encoder
    encoder.name, encoder.preprocessing, encoder.provenance = name, preprocessing, provenance
    return encoder


@dataclass
class Skeleton(Backbone):
    encoder: Encoder | None = None  # the zoo's random-init encoder used as skeleton, if any


def local_skeleton(arch: str) -> Skeleton:
    """Random-init network of ``arch`` to load a local checkpoint into (see :func:`build_local_encoder`)."""
    twin = random_twin(arch)
    if twin is None:
        backbone = build_backbone(arch)
        return Skeleton(**vars(backbone))
    encoder = twin.build(LoadOptions())
    loadable = encoder.trunk.model if isinstance(encoder.trunk, TimmTrunk) else encoder.trunk
    library = "timm" if isinstance(encoder.trunk, TimmTrunk) else "zoo"
    return Skeleton(encoder.trunk, encoder.pool, encoder.feature_dim, loadable, ("fc.", "classifier.", "head."),
                    library, encoder.preprocessing, encoder=encoder)


def random_twin(arch: str) -> EncoderSpec | None:
    """The registered random-init encoder of ``arch`` (``<arch>-random`` first), if any."""
    if f"{arch}-random" in ENCODERS and ENCODERS.get(f"{arch}-random").kind == "random":
        return ENCODERS.get(f"{arch}-random")
    return next((spec for _, spec in ENCODERS.items() if spec.kind == "random" and spec.architecture == arch), None)


def suggest_prefix(file_keys: list[str], expected: list[str], current: str) -> str:
    """A hint naming the key prefix under which most ``expected`` keys appear among ``file_keys``."""
    expected_set = set(expected)
    counts: Counter[str] = Counter()
    for key in file_keys:
        for end in range(len(key)):
            if (end == 0 or key[end - 1] == ".") and key[end:] in expected_set:
                counts[key[:end]] += 1
                break
    if not counts:
        return ""
    best, hits = counts.most_common(1)[0]
    if best == current or hits < len(expected_set) // 2:
        return ""
    return f" Hint: {hits} of the file's keys match the architecture under the prefix '{best}'; try --key-prefix '{best}'."


def preprocessing_from_dict(data: dict[str, Any]) -> Preprocessing:
    """Inverse of :meth:`Preprocessing.to_dict` (lists back to tuples); unknown keys are an error."""
    known = set(Preprocessing.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown preprocessing keys {sorted(unknown)}; known: {sorted(known)}")
    return Preprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def check_new_local_name(name: str) -> bool:
    """Raise ValueError unless ``name`` may name a local encoder; True when it replaces a saved one."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"invalid encoder name '{name}': use lowercase letters, digits, '.', '_' and '-' "
                         f"(e.g. resnet50-simclr-derm)")
    if name in ENCODERS:
        if ENCODERS.resolve(name) != name or ENCODERS.origin(name) != LOCAL_ORIGIN:
            raise ValueError(f"'{name}' is already taken by a {ENCODERS.origin(name)} encoder "
                             f"('{ENCODERS.resolve(name)}'); choose another name")
        return True
    return False


def feature_dim_of(arch: str) -> int:
    """Pooled feature dimension of ``arch`` (its random twin's, else one random build)."""
    twin = random_twin(arch)
    return twin.feature_dim if twin is not None else build_backbone(arch).feature_dim


def _locked(path: Path) -> contextlib.AbstractContextManager[bool]:
    """Serialise read-modify-write of the registry file between processes."""
    return file_lock(path.with_name(path.name + ".lock"))


def _write_entries(path: Path, entries: dict[str, dict]) -> None:
    atomic_write_text(path, json.dumps({"version": REGISTRY_VERSION, "encoders": entries}, indent=2, sort_keys=True))
