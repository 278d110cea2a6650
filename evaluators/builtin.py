"""Importing this module registers the built-in evaluators and probes."""
from __future__ import annotations

from evaluators import linear  # noqa: F401
from evaluators import invariance, saliency, dip  # noqa: F401,E401
