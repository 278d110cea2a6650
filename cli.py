#!/usr/bin/env python
"""medtransfer command line: parse, resolve names, delegate, print. No logic of its own."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click

DEFAULT_RESULTS = Path("results")
EVALUATOR_COMMANDS = ("linear", "invariance", "multiview-invariance", "saliency", "dip")
MAIN_JOB_IMAGE_SIZE = 128


# -- helpers ------------------------------------------------------------------------------------
def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _user_errors() -> tuple[type[BaseException], ...]:
    from benchmark.registry import RegistryError
    from datasets.base import DatasetError
    from pretrained.checkpoints import MissingWeightsError
    from pretrained import errors as encoder_errors
    return (RegistryError, DatasetError, MissingWeightsError, encoder_errors.CheckpointError)


def _run_user_action(action: Callable[[], Any]) -> Any:
    """Run ``action``; turn the harness's user-facing errors into clean click errors."""
    from benchmark.registry import UnknownNameError
    try:
        return action()
    except UnknownNameError as error:
        option = {"encoder": "--model", "dataset": "--dataset", "evaluator": "EVALUATOR"}.get(error.kind)
        raise click.BadParameter(str(error), param_hint=option) from None
    except _user_errors() as error:
        raise click.ClickException(str(error)) from None
    except ValueError as error:
        raise click.UsageError(str(error)) from None


def _parse_pairs(values: tuple[str, ...], what: str) -> dict[str, Any]:
    """KEY=VALUE pairs; values parsed as JSON when they are JSON (numbers, true, lists), else kept as text."""
    out: dict[str, Any] = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"expected KEY=VALUE, got '{item}'", param_hint=what)
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        index, count = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter("use I/N, e.g. 0/4 (0-based shard I of N)", param_hint="--shard") from None
    if not 0 <= index < count:
        raise click.BadParameter(f"shard index must be in 0..{count - 1}", param_hint="--shard")
    return index, count


def _progress_factory() -> Callable[[str, int], Callable[[int], None]]:
    """Progress bars on stderr for long loops (features, episodes, steps)."""
    def make(label: str, total: int) -> Callable[[int], None]:
        bar = click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True)
        bar.__enter__()
        state = {"done": 0}

        def update(n: int) -> None:
            bar.update(n)
            state["done"] += n
            if state["done"] >= total:
                bar.__exit__(None, None, None)
        return update
    return make


def common_run_options(func: Callable) -> Callable:
    """Options shared by every command that runs cells."""
    options = [
        click.option("--results", "results_dir", type=click.Path(path_type=Path), default=DEFAULT_RESULTS, show_default=True,
                     help="Results folder: records, split files, artifacts, leaderboard."),
        click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
                     help="Feature/data cache (default $MEDTRANSFER_CACHE or ~/.cache/medtransfer)."),
        click.option("--no-cache", is_flag=True, help="Do not read or write the feature cache."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--weights-dir", type=click.Path(path_type=Path), default=None,
                     help="Folder searched first for checkpoints (then $MEDTRANSFER_WEIGHTS, ~/.cache/medtransfer/weights)."),
        click.option("--trust-checkpoint", is_flag=True,
                     help="Allow checkpoint formats that need full unpickling (only for files you trust)."),
        click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True, help="Extraction batch size."),
        click.option("--workers", type=click.IntRange(0), default=None, help="DataLoader workers (default: cores - 1, max 8)."),
        click.option("--image-size", type=click.IntRange(0), default=None,
                     help="Override every encoder's input resolution (recorded in the protocol)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for splits, bootstrap and episodes."),
        click.option("--split-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     help="CSV image_id,split to use instead of official/generated splits."),
        click.option("--overwrite", is_flag=True, help="Recompute cells whose record already exists."),
        click.option("-v", "--verbose", count=True, help="-v info, -vv debug logging."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _settings(results_dir: Path, cache_dir: Path | None, no_cache: bool, device: str, weights_dir: Path | None,
              trust_checkpoint: bool, batch_size: int, workers: int | None, image_size: int | None, seed: int,
              split_file: Path | None, overwrite: bool, roots: dict[str, Path], dataset_options: dict[str, dict]):
    from benchmark.device import resolve_device
    from benchmark.features import default_cache_dir
    from benchmark.runner import RunSettings
    from evaluators.base import ExtractionSettings
    from pretrained.encoder import LoadOptions
    try:
        torch_device = resolve_device(device)
    except (ValueError, RuntimeError) as error:
        raise click.BadParameter(str(error), param_hint="--device") from None
    extraction = ExtractionSettings(device=torch_device, cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
                                    batch_size=batch_size, num_workers=workers, image_size=image_size or None)
    return RunSettings(results_dir=results_dir, extraction=extraction,
                       load_options=LoadOptions(weights_dir=str(weights_dir) if weights_dir else None,
                                                trust_checkpoint=trust_checkpoint),
                       roots=roots, dataset_options=dataset_options, seed=seed, split_file=split_file,
                       overwrite=overwrite, progress=_progress_factory())


def _print_outcome(outcome) -> None:
    if outcome.status == "skipped":
        click.echo(f"skipped (record exists, use --overwrite to recompute): {outcome.path}")
        return
    record = outcome.record
    primary = record.metrics[record.primary_metric]
    ci = primary.get("ci")
    ci_text = f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci and None not in ci else ""
    value = primary.get("value")
    value_text = "n/a" if value is None else f"{value:.4f}"
    identity = record.identity
    click.echo(f"{identity.evaluator} | {identity.encoder} | {identity.dataset} | "
               f"{record.primary_metric} = {value_text}{ci_text}")
    others = ", ".join(f"{k}={v['value']:.4f}" for k, v in record.metrics.items()
                       if k != record.primary_metric and isinstance(v, dict) and isinstance(v.get("value"), (int, float)))
    if others:
        click.echo(f"  {others}")
    click.echo(f"  record: {outcome.path}")


# -- the group ----------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """medtransfer: how well does a pretrained image encoder transfer to medical images?

    Every registered encoder runs through the same evaluators and probes on the same datasets;
    results are JSON records aggregated into leaderboards.
    """


@cli.command()
@click.option("--weights-dir", type=click.Path(path_type=Path), default=None, help="Extra folder searched for checkpoints.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(weights_dir: Path | None, as_json: bool) -> None:
    """List registered encoders: name, architecture, feature dim, weights present or not."""
    from tabulate import tabulate
    from pretrained.encoder import LoadOptions
    from pretrained.registry import ENCODERS
    options = LoadOptions(weights_dir=str(weights_dir) if weights_dir else None)
    rows = []
    for name, spec in ENCODERS.items():
        status = spec.status(options)
        rows.append({"name": name, "aliases": ",".join(ENCODERS.aliases_of(name)), "architecture": spec.architecture,
                     "dim": spec.feature_dim, "weights": spec.kind,
                     "present": "yes" if status.present else "no",
                     "origin": ENCODERS.origin(name), "detail": status.detail if not status.present else (status.path or "")})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(tabulate(rows, headers="keys", tablefmt="github"))
    for plugin, error in ENCODERS.plugin_errors.items():
        click.echo(f"warning: plugin '{plugin}' failed to load: {error}", err=True)


@cli.command("datasets")
@click.option("--root", "roots", multiple=True, help="NAME=DIR, to check whether a dataset's files are present.")
def datasets_command(roots: tuple[str, ...]) -> None:
    """List registered datasets, their tasks and whether their files are present."""
    from tabulate import tabulate
    from datasets.registry import DATASETS
    root_map = {k: Path(v) for k, v in _parse_pairs(roots, "--root").items()}
    rows = []
    for name, spec in DATASETS.items():
        root = root_map.get(name)
        rows.append({"name": name, "tasks": ", ".join(spec.tasks), "needs --root": "yes" if spec.needs_root else "no",
                     "present": "yes" if spec.present(root) else ("?" if root is None else "no"),
                     "source": spec.source, "description": spec.description})
    click.echo(tabulate(rows, headers="keys", tablefmt="github"))
    for plugin, error in DATASETS.plugin_errors.items():
        click.echo(f"warning: plugin '{plugin}' failed to load: {error}", err=True)


def _evaluator_help(name: str) -> str:
    try:
        from evaluators.registry import EVALUATORS
        spec = EVALUATORS.get(name)
        defaults = ", ".join(f"{k}={v!r}" for k, v in spec.defaults.items())
        presets = ", ".join(spec.presets) or "none"
        return f"{spec.description}\n\nOptions (-o KEY=VALUE): {defaults}\n\nPresets: {presets}"
    except Exception as error:  # help must never fail
        return f"(could not load evaluator '{name}': {error})"


def run_evaluator_command(evaluator: str, model: str, dataset: str, root: Path | None, preset: str | None,
                          option: tuple[str, ...], dataset_option: tuple[str, ...], variant: str | None, **common) -> None:
    """Shared body of every evaluator command: one cell, then print its headline."""
    _setup_logging(common.pop("verbose"))
    from benchmark.runner import Cell, Runner
    from datasets.registry import DATASETS
    overrides = _parse_pairs(option, "--option")

    def action():
        dataset_name = DATASETS.resolve(dataset)
        settings = _settings(roots={dataset_name: root} if root else {},
                             dataset_options={dataset_name: _parse_pairs(dataset_option, "--dataset-option")}, **common)
        return Runner(settings).run(Cell(model, dataset_name, evaluator, preset=preset, overrides=overrides, variant=variant))
    _print_outcome(_run_user_action(action))


def _make_evaluator_command(name: str) -> click.Command:
    @click.option("--model", "-m", required=True, help="Encoder name or alias (see `cli.py models`).")
    @click.option("--dataset", "-d", required=True, help="Dataset name (see `cli.py datasets`).")
    @click.option("--root", type=click.Path(path_type=Path), default=None, help="Dataset files (for datasets that need them).")
    @click.option("--preset", default=None, help="Named protocol preset of this evaluator.")
    @click.option("--option", "-o", multiple=True, help="Protocol option KEY=VALUE (repeatable); see the list below.")
    @click.option("--dataset-option", multiple=True, help="Dataset option KEY=VALUE (e.g. task=melanoma).")
    @click.option("--variant", default=None, help="Record variant name (default: preset name + hash of -o options).")
    @common_run_options
    def command(**kwargs) -> None:
        run_evaluator_command(name, **kwargs)

    class LazyHelpCommand(click.Command):
        def get_help(self, ctx: click.Context) -> str:
            self.help = f"Run the '{name}' evaluator on one encoder and dataset.\n\n" + _evaluator_help(name)
            return super().get_help(ctx)

    return click.command(name, cls=LazyHelpCommand, short_help=f"Run the {name} evaluator on one encoder x dataset.")(command)


for _name in EVALUATOR_COMMANDS:
    cli.add_command(_make_evaluator_command(_name))


@cli.command("evaluate")
@click.argument("evaluator")
@click.option("--model", "-m", required=True, help="Encoder name or alias.")
@click.option("--dataset", "-d", required=True, help="Dataset name.")
@click.option("--root", type=click.Path(path_type=Path), default=None, help="Dataset files.")
@click.option("--preset", default=None, help="Named protocol preset.")
@click.option("--option", "-o", multiple=True, help="Protocol option KEY=VALUE (repeatable).")
@click.option("--dataset-option", multiple=True, help="Dataset option KEY=VALUE.")
@click.option("--variant", default=None, help="Record variant name.")
@common_run_options
def evaluate(evaluator: str, **kwargs) -> None:
    """Run any registered evaluator (plugins included) by name."""
    run_evaluator_command(evaluator, **kwargs)


@cli.command()
@click.option("--results", "results_dir", type=click.Path(path_type=Path), default=DEFAULT_RESULTS, show_default=True,
              help="Results folder to aggregate.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Markdown file (CSV written beside it).")
@click.option("--print/--no-print", "show", default=True, help="Print the markdown.")
def leaderboard(results_dir: Path, out: Path | None, show: bool) -> None:
    """Aggregate result records into markdown and CSV leaderboards."""
    from benchmark.leaderboard import write_leaderboard
    markdown, csv, board = write_leaderboard(results_dir, out)
    if show:
        click.echo(markdown.read_text())
    for path, reason in board.errors:
        click.echo(f"warning: skipped corrupt record {path}: {reason}", err=True)
    click.echo(f"wrote {markdown} and {csv}", err=True)


@cli.command()
@click.option("--model", "models_", multiple=True, help="Encoders (default: every default encoder usable offline).")
@click.option("--dataset", "datasets_", multiple=True, help="Datasets (default: synthderm).")
@click.option("--evaluator", "evaluators_", multiple=True, help="Evaluators (default: every one with a main-job preset).")
@click.option("--root", "roots", multiple=True, help="NAME=DIR for datasets that need files.")
@click.option("--shard", default=None, help="Run shard I/N of the cell list (0-based), e.g. for a SLURM array.")
@click.option("--dry-run", is_flag=True, help="List the cells and whether they are done, run nothing.")
@common_run_options
def benchmark(models_, datasets_, evaluators_, roots, shard, dry_run, **common) -> None:
    """The main job: encoders x datasets x evaluators into records, then the leaderboard.

    Finished cells are skipped, so a killed run resumes where it stopped. Without --image-size the
    main job runs every encoder at 128 px (the embedded data's resolution, and a 2-core CPU budget);
    pass --image-size 0 for each encoder's native resolution.
    """
    _setup_logging(common.pop("verbose"))
    if common["image_size"] is None:
        common["image_size"] = MAIN_JOB_IMAGE_SIZE
    elif common["image_size"] == 0:
        common["image_size"] = None
    from benchmark.leaderboard import write_leaderboard
    from benchmark.main_job import plan_cells
    from benchmark.records import record_exists
    from benchmark.runner import Runner, shard_cells
    settings = _run_user_action(lambda: _settings(roots={k: Path(v) for k, v in _parse_pairs(roots, "--root").items()},
                                                  dataset_options={}, **common))
    cells = _run_user_action(lambda: plan_cells(list(models_), list(datasets_), list(evaluators_), settings.load_options))
    cells = shard_cells(cells, _parse_shard(shard))
    click.echo(f"{len(cells)} cell(s); results in {settings.results_dir}", err=True)
    runner = Runner(settings)
    for number, cell in enumerate(cells, 1):
        identity = _run_user_action(lambda: runner.identity(cell))
        if dry_run:
            done = record_exists(settings.results_dir, identity)
            click.echo(f"[{'done' if done else 'todo'}] {identity.evaluator}/{identity.variant} {identity.encoder} on {identity.dataset}")
            continue
        click.echo(f"[{number}/{len(cells)}] {identity.evaluator} {identity.encoder} on {identity.dataset}", err=True)
        _print_outcome(_run_user_action(lambda: runner.run(cell)))
    if not dry_run:
        markdown, csv, board = write_leaderboard(settings.results_dir)
        click.echo(markdown.read_text())
        click.echo(f"wrote {markdown} and {csv}", err=True)


if __name__ == "__main__":
    cli()
