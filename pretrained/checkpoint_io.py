"""Reading checkpoint files safely.

Every file is read with ``torch.load(weights_only=True)`` (tensors, containers and primitive types
only; no code runs). A file that needs full unpickling (pickled modules, Lightning
``AttributeDict`` hyper-parameters, DeepMind's haiku pickle) is refused with a message naming
what it needs, unless the user passes ``--trust-checkpoint`` (``LoadOptions.trust_checkpoint``).
Trusted files are unpickled with :class:`LenientUnpickler`, which stands in inert placeholders for
classes whose libraries are not installed (pytorch_lightning, haiku, jax), so the tensors can be
read without those libraries. ``.safetensors`` files are read with safetensors (always safe).
"""
from __future__ import annotations

import logging
import pickle
import re
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

from pretrained.errors import CheckpointError

log = logging.getLogger(__name__)

LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # first pickled object of pre-1.6 (non-zip) torch.save files
TRUST_HINT = ("Unpickling can run arbitrary code: only if you trust where the file comes from, "
              "pass --trust-checkpoint (LoadOptions(trust_checkpoint=True)).")


def read_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> Any:
    """The object stored in ``path`` (usually a dict holding a state dict), on CPU.

    Raises :class:`CheckpointError` when the file is unreadable or needs full unpickling without
    ``trust_checkpoint``.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = _weights_only_reason(error)
        if not trust_checkpoint:
            raise CheckpointError(f"{path} cannot be read as plain weights (torch.load weights_only=True): {reason}. "
                                  f"{TRUST_HINT}") from None
        log.warning("fully unpickling trusted checkpoint %s (%s)", path, reason)
        return read_trusted(path)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(error)}") from None


def read_trusted(path: str | Path) -> Any:
    """Full unpickling of a trusted file (torch zip or legacy format, or a plain pickle)."""
    path = Path(path)
    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as handle:
                first = LenientUnpickler(handle).load()
            if first != LEGACY_TORCH_MAGIC:
                return first  # a plain (dill) pickle, such as BYOL's haiku checkpoint
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=LENIENT_PICKLE)
    except (RuntimeError, pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError,
            IndexError) as error:
        raise CheckpointError(f"cannot unpickle {path}: {_first_line(error)}") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{path} is a .safetensors file; install the 'safetensors' package to read it") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {path}: {_first_line(error)}") from None


def _weights_only_reason(error: BaseException) -> str:
    """The useful part of torch's weights_only refusal: which Python object the file needs."""
    text = str(error)
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if match:
        return f"it stores the Python object '{match.group(1)}', which needs full unpickling"
    match = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.S)
    detail = f" ({match.group(1).strip()})" if match else ""
    return (f"it is not a plain PyTorch weights file, or it is corrupt{detail}; "
            f"files pickled with other tools need full unpickling")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


class Placeholder:
    """Inert stand-in for an object whose class could not be imported while unpickling.

    Keeps what pickle hands it: constructor ``args``, ``state`` (``__setstate__``), and items or
    list entries (``__setitem__``/``append``), so converters can still read plain data out of it.
    """

    _placeholder_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        instance = super().__new__(cls)
        instance.args, instance.kwargs, instance.state = args, kwargs, None
        instance.items, instance.entries = {}, []
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.entries.append(value)

    def extend(self, values: Any) -> None:
        self.entries.extend(values)

    def __repr__(self) -> str:
        return f"<placeholder {self._placeholder_name}>"


def placeholder_class(module: str, name: str) -> type:
    return type(name, (Placeholder,), {"__module__": f"placeholder.{module}", "_placeholder_name": f"{module}.{name}"})


class LenientUnpickler(pickle.Unpickler):
    """Full unpickler (trusted files only) that replaces unimportable classes by placeholders."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            log.debug("unpickling %s.%s as a placeholder (library not installed)", module, name)
            return placeholder_class(module, name)


def _lenient_load(file: Any, **kwargs: Any) -> Any:
    return LenientUnpickler(file, **kwargs).load()


LENIENT_PICKLE = types.ModuleType("medtransfer_lenient_pickle")
LENIENT_PICKLE.Unpickler = LenientUnpickler
LENIENT_PICKLE.load = _lenient_load
LENIENT_PICKLE.__name__ = "medtransfer_lenient_pickle"
