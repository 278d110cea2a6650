"""The encoder registry (built-ins from :mod:`pretrained.zoo`, plugins from entry points)."""
from __future__ import annotations

from benchmark.registry import Registry
from pretrained.encoder import EncoderSpec, validate_encoder_spec

ENCODERS: Registry[EncoderSpec] = Registry(
    "encoder", "medtransfer.encoders", builtin_modules=("pretrained.zoo",), validate=validate_encoder_spec)
