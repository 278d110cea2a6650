"""Which cells the main job (``cli.py benchmark``) runs."""
from __future__ import annotations

import logging
from typing import Callable

from benchmark.runner import Cell, Runner
from datasets.registry import DATASETS
from evaluators.registry import EVALUATORS
from pretrained.encoder import LoadOptions
from pretrained.registry import ENCODERS

log = logging.getLogger(__name__)


def default_encoders(options: LoadOptions) -> list[str]:
    """Encoders flagged for the main job whose weights are present (usable offline), plus the built-in
    pretraining recipes (the main job makes those itself, see :func:`prepare_recipe_encoders`)."""
    from pretrained.ssl.recipes import RECIPES
    chosen = []
    for name, spec in ENCODERS.items():
        if not spec.default_in_benchmark:
            continue
        status = spec.status(options)
        if status.present or name in RECIPES:
            chosen.append(name)
        else:
            log.info("main job skips %s: %s", name, status.detail)
    return chosen


def recipe_exclusions(encoders: list[str], runner: Runner, report: Callable[[str], None] = log.info) -> list[str]:
    """The built-in recipe encoders to leave out of this run: those whose pretraining images could
    overlap this run's evaluation splits (another ``--seed`` or ``--split-file``). Computes nothing heavy."""
    from datasets.splits import resolve_splits
    from pretrained.ssl.recipes import RECIPES
    excluded = []
    for name in (n for n in _wanted(encoders) if n in RECIPES):
        config = RECIPES[name]
        dataset = runner.dataset(config.dataset)
        recipe_split = resolve_splits(dataset, runner.settings.results_dir, seed=config.split_seed,
                                      save=not runner.read_only)
        if runner.splits(config.dataset).sha256 != recipe_split.sha256:
            report(f"leaving out {name}: it was pretrained on the split of seed {config.split_seed}, which differs "
                   f"from this run's {dataset.name} splits (its pretraining images could be test images here)")
            excluded.append(name)
    return excluded


def prepare_recipe_encoders(encoders: list[str], runner: Runner, *, dry_run: bool = False,
                            report: Callable[[str], None] = log.info) -> None:
    """Make the built-in recipe encoders among ``encoders`` (e.g. ``resnet18-simclr-synthderm``) when missing.

    Call it with the encoders of the cells that will compute (not those skipped). Pretraining runs
    once (its checkpoint is kept in the cache folder; a killed run resumes).
    """
    from pretrained.ssl.recipes import RECIPES, ensure_recipe, recipe_status
    for name in dict.fromkeys(ENCODERS.resolve(e) for e in encoders):
        if name not in RECIPES or recipe_status(name).present:
            continue
        config = RECIPES[name]
        if dry_run:
            report(f"[todo] pretrain {name} ({config.method}, {config.epochs} epochs on the {config.dataset} train split)")
            continue
        report(f"pretraining {name} once ({config.method}, {config.epochs} epochs on the {config.dataset} "
               f"train split at {config.image_size} px; resumes if killed)")
        ensure_recipe(name, results_dir=runner.settings.results_dir, device=runner.settings.extraction.device,
                      on_epoch_end=lambda epoch, loss, n=config.epochs: report(f"  epoch {epoch}/{n}: loss {loss:.4f}"))


def _wanted(encoders: list[str]) -> list[str]:
    return [ENCODERS.resolve(e) for e in encoders] or [n for n, s in ENCODERS.items() if s.default_in_benchmark]


def plan_cells(encoders: list[str], datasets: list[str], evaluators: list[str], options: LoadOptions,
               exclude: list[str] | tuple[str, ...] = ()) -> list[Cell]:
    """The cell list, ordered evaluator-major so cheap evaluators finish first and features are reused."""
    encoders = [e for e in ([ENCODERS.resolve(e) for e in encoders] or default_encoders(options)) if e not in exclude]
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
