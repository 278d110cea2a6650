"""Importing this module registers the built-in evaluators and probes."""
from __future__ import annotations

from evaluators import linear  # noqa: F401
