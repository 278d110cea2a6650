"""The dataset registry (built-ins from :mod:`datasets.zoo`, plugins from entry points)."""
from __future__ import annotations

from benchmark.registry import Registry
from datasets.base import DatasetSpec, validate_dataset_spec

DATASETS: Registry[DatasetSpec] = Registry(
    "dataset", "medtransfer.datasets", builtin_modules=("datasets.zoo",), validate=validate_dataset_spec)
