"""Importing this module registers the built-in evaluators and probes."""
from __future__ import annotations

from evaluators import fewshot, finetune, knn, kshot_linear, linear  # noqa: F401
from evaluators import dip, invariance, saliency  # noqa: F401
from evaluators import medmnist_v2  # noqa: F401
