"""The evaluator registry (built-ins from :mod:`evaluators.builtin`, plugins from entry points)."""
from __future__ import annotations

from benchmark.registry import Registry
from evaluators.base import EvaluatorSpec, validate_evaluator_spec

EVALUATORS: Registry[EvaluatorSpec] = Registry(
    "evaluator", "medtransfer.evaluators", builtin_modules=("evaluators.builtin",), validate=validate_evaluator_spec)
