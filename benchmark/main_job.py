"""Which cells the main job (``cli.py benchmark``) runs."""
from __future__ import annotations

import logging

from benchmark.runner import Cell
from datasets.registry import DATASETS
from evaluators.registry import EVALUATORS
from pretrained.encoder import LoadOptions
from pretrained.registry import ENCODERS

log = logging.getLogger(__name__)


def default_encoders(options: LoadOptions) -> list[str]:
    """Encoders flagged for the main job whose weights are present (usable offline)."""
    chosen = []
    for name, spec in ENCODERS.items():
        if not spec.default_in_benchmark:
            continue
        status = spec.status(options)
        if status.present:
            chosen.append(name)
        else:
            log.info("main job skips %s: %s", name, status.detail)
    return chosen


def plan_cells(encoders: list[str], datasets: list[str], evaluators: list[str], options: LoadOptions) -> list[Cell]:
    """The cell list, ordered evaluator-major so cheap evaluators finish first and features are reused."""
    encoders = [ENCODERS.resolve(e) for e in encoders] or default_encoders(options)
    datasets = [DATASETS.resolve(d) for d in datasets] or [n for n, s in DATASETS.items() if s.default_in_benchmark]
    if evaluators:
        specs = [EVALUATORS.get(e) for e in evaluators]
    else:
        specs = [s for _, s in EVALUATORS.items() if s.benchmark_preset is not None]
    specs.sort(key=lambda s: (s.order, s.name))
    cells = []
    for spec in specs:
        preset = None if spec.benchmark_preset in (None, "default") else spec.benchmark_preset
        for dataset in datasets:
            for encoder in encoders:
                cells.append(Cell(encoder, dataset, spec.name, preset=preset))
    return cells
