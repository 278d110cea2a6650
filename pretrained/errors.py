"""Errors raised while loading encoders (messages are meant for end users)."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint whose layout or content is not what its format should be."""
