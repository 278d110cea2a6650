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
EVALUATOR_COMMANDS = ("linear", "knn", "fewshot", "kshot-linear", "finetune", "invariance", "multiview-invariance",
                      "saliency", "dip")
MAIN_JOB_IMAGE_SIZE = 128
MIN_IMAGE_SIZE = 16  # smallest --image-size: below it a ResNet's last map is empty or 1 px of padding


# -- helpers ------------------------------------------------------------------------------------
def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _user_errors() -> tuple[type[BaseException], ...]:
    from benchmark.registry import RegistryError
    from datasets.base import DatasetError
    from pretrained.checkpoints import MissingWeightsError
    from pretrained import errors as encoder_errors
    from evaluators.saliency_methods import MissingDependencyError
    return (RegistryError, DatasetError, MissingWeightsError, encoder_errors.CheckpointError, MissingDependencyError)


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


def _check_image_size(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and 0 < value < MIN_IMAGE_SIZE:
        raise click.BadParameter(f"must be 0 (each encoder's own input size) or >= {MIN_IMAGE_SIZE} px, got {value}")
    return value


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
        click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     help="Weights file for --model local:ARCH (any torchvision or timm:NAME architecture)."),
        click.option("--key-prefix", default="", help="Backbone key prefix in --checkpoint, e.g. module.encoder_q."),
        click.option("--batch-size", type=click.IntRange(1), default=None,
                     help="Extraction batch size (default: 256 on CUDA, 64 on the CPU)."),
        click.option("--workers", type=click.IntRange(0), default=None,
                     help="Image decoding threads / DataLoader workers (default: cores - 1, max 8)."),
        click.option("--decode", type=click.Choice(["auto", "pil", "nvjpeg"]), default="auto", show_default=True,
                     help="Image decoding for extraction: nvjpeg on the GPU (auto on CUDA) or PIL (recorded)."),
        click.option("--compile", "compile_encoder", is_flag=True,
                     help="torch.compile the encoder for feature extraction (recorded)."),
        click.option("--image-size", type=click.IntRange(0), default=None, callback=_check_image_size,
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


def _check_locations(results_dir: Path, cache_dir: Path | None, *, write: bool = True) -> None:
    """Before any compute: the results and cache folders are folders that accept files (one-line errors).

    ``write=False`` (dry runs) only checks that neither names a file, and creates nothing.
    """
    from benchmark.atomic import check_writable_folder
    from benchmark.cache import default_cache_dir
    for path, hint in ((results_dir, "--results"), (cache_dir or default_cache_dir(), "--cache-dir")):
        try:
            if write:
                check_writable_folder(path)
            elif Path(path).exists() and not Path(path).is_dir():
                raise ValueError(f"{path} is a file, not a folder; name a folder")
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint=hint) from None


def _use_cache_dir(cache_dir: Path | None) -> None:
    """Every cache of this command (features, renders, recipes, sha256/md5 memos) goes under ``cache_dir``."""
    from benchmark.cache import cache_dir_override
    context = click.get_current_context(silent=True)
    if cache_dir is not None and context is not None:
        context.with_resource(cache_dir_override(cache_dir))


def _settings(results_dir: Path, cache_dir: Path | None, no_cache: bool, device: str, weights_dir: Path | None,
              trust_checkpoint: bool, batch_size: int, workers: int | None, image_size: int | None, seed: int,
              split_file: Path | None, overwrite: bool, roots: dict[str, Path], dataset_options: dict[str, dict],
              write: bool = True, decode: str = "auto", compile_encoder: bool = False):
    from benchmark.device import default_batch_size, resolve_device
    from benchmark.features import default_cache_dir
    from benchmark.runner import RunSettings
    from evaluators.base import ExtractionSettings
    from pretrained.encoder import LoadOptions
    from benchmark import distributed
    _check_locations(results_dir, cache_dir, write=write)
    _use_cache_dir(cache_dir)
    try:
        torch_device = resolve_device(device)
    except (ValueError, RuntimeError) as error:
        raise click.BadParameter(str(error), param_hint="--device") from None
    torch_device = _run_user_action(lambda: distributed.init_from_env(torch_device))  # under torchrun: join the group
    from benchmark.image_batches import resolve_decode
    try:
        resolve_decode(decode, torch_device)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--decode") from None
    extraction = ExtractionSettings(device=torch_device, cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
                                    batch_size=batch_size or default_batch_size(torch_device), num_workers=workers,
                                    image_size=image_size or None,
                                    decode=decode, compile=compile_encoder)
    return RunSettings(results_dir=results_dir, extraction=extraction,
                       load_options=LoadOptions(weights_dir=str(weights_dir) if weights_dir else None,
                                                trust_checkpoint=trust_checkpoint),
                       roots=roots, dataset_options=dataset_options, seed=seed, split_file=split_file,
                       overwrite=overwrite, progress=_progress_factory() if distributed.is_main_process() else None)


def _resolve_local_model(model: str, checkpoint: Path | None, key_prefix: str) -> str:
    """``local:ARCH`` + --checkpoint -> a registered ad hoc encoder name; other names pass through."""
    if not model.lower().startswith("local:"):
        if checkpoint is not None:
            raise click.UsageError(f"--checkpoint only applies to --model local:ARCH (got --model {model})")
        return model
    if checkpoint is None:
        raise click.UsageError(f"--model {model} needs --checkpoint FILE (and usually --key-prefix)")
    from pretrained.local_registry import adhoc_local_encoder
    return adhoc_local_encoder(model.split(":", 1)[1], checkpoint, key_prefix)


def _print_outcome(outcome) -> None:
    from benchmark.distributed import is_main_process
    if not is_main_process():  # under torchrun only rank 0 reports
        return
    if outcome.status == "skipped":
        click.echo(f"skipped (record exists with this protocol; --overwrite recomputes): {outcome.path}")
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


@cli.group(invoke_without_command=True)
@click.option("--weights-dir", type=click.Path(path_type=Path), default=None, help="Extra folder searched for checkpoints.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def models(ctx: click.Context, weights_dir: Path | None, as_json: bool) -> None:
    """List registered encoders: name, architecture, feature dim, weights present or not.

    Subcommands `models add` / `models remove` manage local encoders (your own checkpoints).
    """
    if ctx.invoked_subcommand is not None:
        return
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


PREPROCESSING_PRESETS = ("default", "imagenet", "unit", "cxr", "histogram")


def _preprocessing_preset(preset: str, input_size: int | None):
    """--preprocessing NAME -> Preprocessing (None = the architecture's default)."""
    from pretrained.preprocessing import CXR_MEAN, CXR_STD, Preprocessing
    size = input_size or 224
    presets = {
        "imagenet": Preprocessing(input_size=size, resize_size=size),
        "unit": Preprocessing(input_size=size, resize_size=size, mean=None, std=None),
        "cxr": Preprocessing(input_size=size, resize_size=size, mean=CXR_MEAN, std=CXR_STD, grayscale=True),
        "histogram": Preprocessing(input_size=size, resize_size=size, mean=None, std=None, grayscale=True,
                                   histogram_normalize=True),
    }
    if preset == "default":
        if input_size:
            raise click.UsageError("--input-size needs an explicit --preprocessing preset")
        return None
    return presets[preset]


@models.command("add")
@click.argument("name")
@click.option("--arch", required=True, help="torchvision name (resnet50, densenet121, efficientnet_b0, ...) or timm:NAME.")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The weights file (.pth/.pt/.ckpt/.tar/.safetensors).")
@click.option("--key-prefix", default="", show_default=True, help="Prefix of the backbone keys, e.g. module.encoder_q.")
@click.option("--preprocessing", type=click.Choice(PREPROCESSING_PRESETS), default="default", show_default=True,
              help="Input pipeline: default (the architecture's), imagenet (mean/std), unit ([0,1], no mean/std), "
                   "cxr (grey, CXR mean/std), histogram (grey, histogram equalisation to 0..255).")
@click.option("--input-size", type=click.IntRange(16), default=None, help="Input resolution (with a preset).")
@click.option("--kind", type=click.Choice(["user", "in-domain"]), default="user", show_default=True,
              help="Shown in `cli.py models`.")
@click.option("--licence", default="", help="Licence of the weights (recorded).")
@click.option("--description", default="", help="One line shown in `cli.py models`.")
@click.option("--trust-checkpoint", is_flag=True, help="Allow a file that needs full unpickling (only if you trust it).")
def models_add(name: str, arch: str, checkpoint: Path, key_prefix: str, preprocessing: str, input_size: int | None,
               kind: str, licence: str, description: str, trust_checkpoint: bool) -> None:
    """Register your own checkpoint as encoder NAME (no code; saved in the local registry).

    The file is loaded once now, so a wrong --arch or --key-prefix fails here with the keys that
    do not fit. Example: python cli.py models add resnet50-mine --arch resnet50
    --checkpoint ckpt.pth.tar --key-prefix module.encoder_q.
    """
    from pretrained.encoder import LoadOptions
    from pretrained.local_registry import (build_local_encoder, check_new_local_name, local_registry_path,
                                           register_local_encoder)
    prep = _preprocessing_preset(preprocessing, input_size)

    def action():
        existed = check_new_local_name(name)
        entry = {"arch": arch, "checkpoint": str(checkpoint.resolve()), "key_prefix": key_prefix,
                 "preprocessing": prep.to_dict() if prep else None}
        encoder = build_local_encoder(name, entry, LoadOptions(trust_checkpoint=trust_checkpoint))  # fail now
        registered = register_local_encoder(name, arch, checkpoint, key_prefix, prep, kind=kind, licence=licence,
                                            description=description)
        return encoder, registered, existed
    encoder, registered, existed = _run_user_action(action)
    click.echo(f"{'updated' if existed else 'added'} local encoder '{registered.name}': {arch}, "
               f"{registered.feature_dim}-d features, sha256 {encoder.provenance['weights_sha256'][:16]}..., "
               f"dropped {encoder.provenance['dropped_keys'] or 'nothing'}, ignored {encoder.provenance['ignored_keys']} keys")
    click.echo(f"saved in {local_registry_path()}; use it with --model {registered.name}")


@models.command("remove")
@click.argument("name")
def models_remove(name: str) -> None:
    """Remove local encoder NAME from the local registry (the checkpoint file is kept)."""
    from pretrained.local_registry import remove_local_encoder
    _run_user_action(lambda: remove_local_encoder(name))
    click.echo(f"removed local encoder '{name}'")


@cli.group(invoke_without_command=True)
@click.option("--weights-dir", type=click.Path(path_type=Path), default=None, help="Extra folder searched first.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (full sha256).")
@click.pass_context
def weights(ctx: click.Context, weights_dir: Path | None, as_json: bool) -> None:
    """List every checkpoint file: encoder, file, present or not, sha256, where to get it.

    Folders searched: --weights-dir, $MEDTRANSFER_WEIGHTS, ~/.cache/medtransfer/weights (and the
    torch hub cache for torchvision weights). `weights download NAME` fetches one.
    """
    if ctx.invoked_subcommand is not None:
        return
    from tabulate import tabulate
    from pretrained.weights_listing import weights_rows
    rows = weights_rows(weights_dir)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = [{"encoder": r["encoder"], "file": r["file"], "present": r["path"] or "no",
              "sha256": (r["sha256"][:16] + "...") if r["sha256"] else "", "get it from": r["where"]} for r in rows]
    click.echo(tabulate(table, headers="keys", tablefmt="github"))


@weights.command("download")
@click.argument("name")
@click.option("--weights-dir", type=click.Path(path_type=Path), default=None,
              help="Where to put the file (default: first of $MEDTRANSFER_WEIGHTS, ~/.cache/medtransfer/weights).")
@click.option("--force", is_flag=True, help="Download even if a file for this encoder is already present.")
def weights_download(name: str, weights_dir: Path | None, force: bool) -> None:
    """Download the checkpoint of encoder NAME (resumes an interrupted download, checks sha256)."""
    from pretrained.download import DownloadError, download_file
    from pretrained.weights_listing import download_plan
    plan = _run_user_action(lambda: download_plan(name, weights_dir, force))
    if plan.present is not None:
        click.echo(f"{plan.encoder}: already present at {plan.present} (use --force to download again)")
        return
    click.echo(f"{plan.encoder}: {plan.source.url}\n  -> {plan.dest}", err=True)
    bar = {"bar": None, "shown": 0}

    def progress(done: int, total: int | None) -> None:
        if total is None:  # no Content-Length: no bar, the final line gives the size
            return
        if bar["bar"] is None:
            bar["bar"] = click.progressbar(length=total, label=plan.dest.name, file=sys.stderr, show_pos=True)
            bar["bar"].__enter__()
        bar["bar"].update(done - bar["shown"])
        bar["shown"] = done
    try:
        result = download_file(plan.source.url, plan.dest, plan.source.sha256, progress=progress)
    except DownloadError as error:
        raise click.ClickException(str(error)) from None
    finally:
        if bar["bar"] is not None:
            bar["bar"].__exit__(None, None, None)
    resumed = f" (resumed at {result.resumed_from} bytes)" if result.resumed_from else ""
    check = "verified" if result.checksum_verified else "no expected checksum known; record it"
    click.echo(f"installed {result.path} ({result.size} bytes){resumed}\n  sha256 {result.sha256} ({check})")


@cli.command("datasets")
@click.option("--root", "roots", multiple=True,
              help="NAME=DIR: where a dataset's files are (default $MEDTRANSFER_DATA/<folder>); shows class counts.")
@click.option("--counts/--no-counts", default=True, show_default=True,
              help="Build datasets whose files are present to show their class counts.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def datasets_command(roots: tuple[str, ...], counts: bool, as_json: bool) -> None:
    """List registered datasets: tasks, files present, class counts, source."""
    from tabulate import tabulate
    from datasets.base import DatasetError
    from datasets.common import default_data_dir
    from datasets.registry import DATASETS
    root_map = {DATASETS.resolve(k) if k in DATASETS else k: Path(v)
                for k, v in _parse_pairs(roots, "--root").items()}
    rows = []
    for name, spec in DATASETS.items():
        root = root_map.get(name)
        if root is None and spec.needs_root and spec.extra.get("folder"):
            root = default_data_dir() / spec.extra["folder"]
        present = spec.present(root)
        classes = ""
        if counts and present and spec.needs_root:
            try:
                dataset = spec.build(root, {})
                classes = ", ".join(f"{k} {v}" for k, v in dataset.class_counts().items())
            except (DatasetError, OSError) as error:
                classes = f"error: {error}"
        rows.append({"name": name, "tasks": ", ".join(spec.tasks), "present": "yes" if present else "no",
                     "root": str(root) if root is not None and spec.needs_root else "",
                     "classes": classes, "licence": spec.licence, "source": spec.source,
                     "description": spec.description})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        shown = [{"name": r["name"], "tasks": r["tasks"], "files": r["present"], "classes": r["classes"],
                  "description": r["description"]} for r in rows]
        if not any(r["classes"] for r in shown):
            shown = [{k: v for k, v in r.items() if k != "classes"} for r in shown]
        click.echo(tabulate(shown, headers="keys", tablefmt="github", maxcolwidths=[None, 24, None, 50, 60]))
        click.echo("\nTasks: --dataset-option task=NAME (first listed is the default). Layouts, licences and "
                   "sources: docs/datasets.md", err=True)
    for plugin, error in DATASETS.plugin_errors.items():
        click.echo(f"warning: plugin '{plugin}' failed to load: {error}", err=True)


@cli.group("data")
def data_group() -> None:
    """Check and download dataset files."""


@data_group.command("check")
@click.argument("name")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="The dataset's folder (default $MEDTRANSFER_DATA/<folder>).")
@click.option("--dataset-option", multiple=True, help="Dataset option KEY=VALUE (e.g. task=melanoma).")
@click.option("--quick", is_flag=True, help="Only check that files exist; do not decode every image.")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="Threads decoding images.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug logging.")
def data_check(name: str, root: Path | None, dataset_option: tuple[str, ...], quick: bool, workers: int,
               as_json: bool, verbose: int) -> None:
    """Validate a download: layout, CSV columns, duplicate ids, missing, unreadable or truncated images.

    Exits with status 1 when something must be fixed (warnings such as an md5 mismatch do not fail).
    """
    _setup_logging(verbose)
    from dataclasses import asdict
    from datasets.check import check_download
    options = _parse_pairs(dataset_option, "--dataset-option")
    progress = None if as_json or quick else _progress_factory()

    def action():
        from datasets.registry import DATASETS
        return check_download(DATASETS.resolve(name), root, options, decode=not quick, workers=workers,
                               progress=progress)
    report = _run_user_action(action)
    if as_json:
        click.echo(json.dumps({**asdict(report), "root": str(report.root) if report.root else None, "ok": report.ok},
                              indent=2, default=str))
    else:
        facts = report.facts
        if facts:
            click.echo(f"{facts['name']}: {facts['images']} images, {facts['groups']} groups; task: {facts['task']}")
            click.echo("classes: " + ", ".join(f"{k} {v}" for k, v in facts["class_counts"].items()))
            if facts.get("split_sizes"):
                click.echo("official splits: " + ", ".join(f"{k} {v}" for k, v in facts["split_sizes"].items()))
            if facts["subgroups"]:
                click.echo("subgroups: " + ", ".join(facts["subgroups"]))
            if facts.get("modes"):
                depths = facts["bit_depths"]
                click.echo("modes: " + ", ".join(f"{k} {v}" for k, v in facts["modes"].items())
                           + "; bit depth " + "/".join(depths)
                           + (f" ({', '.join(f'{k}-bit {v}' for k, v in depths.items())})" if len(depths) > 1 else ""))
                if any(int(d) > 8 for d in depths):
                    click.echo(f"  >8-bit images are scaled to 8-bit RGB by intensity_window={facts['intensity_window']} "
                               f"(docs/datasets.md; --dataset-option intensity_window=LO,HI for a fixed window)")
        for problem in report.problems:
            click.echo(f"{problem.severity.upper()} [{problem.kind}] {problem.message}")
            for example in problem.examples:
                click.echo(f"    {example}")
        click.echo("OK: no problems found" if not report.problems else
                   ("OK with warnings" if report.ok else "FAILED: fix the errors above"))
    if not report.ok:
        sys.exit(1)


@data_group.command("download")
@click.argument("name")
@click.option("--size", type=click.Choice(["28", "64", "128", "224"]), default="28", show_default=True,
              help="MedMNIST image size (64/128/224 are MedMNIST+ files).")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to write into (default $MEDTRANSFER_DATA/medmnist).")
@click.option("--url", default=None, help="Download from this URL instead (a mirror).")
@click.option("--md5", default=None, help="Expected md5 instead of the published one (e.g. for a mirror).")
def data_download(name: str, size: str, dest: Path | None, url: str | None, md5: str | None) -> None:
    """Download a dataset that can be fetched without registration (MedMNIST: medmnist:FLAG).

    Resumes an interrupted download (``.part`` file) and checks the published md5; a mismatch is
    reported and the file is not installed. Other datasets need a registration or a licence
    click-through: docs/datasets.md says where to get each.
    """
    from datasets.common import default_data_dir
    from datasets.download import DownloadError, download
    from datasets.medmnist_info import MEDMNIST_2D, file_name, url as medmnist_url
    key = name.strip().lower()
    flag = key[len("medmnist:"):] if key.startswith("medmnist:") else None
    if flag is None or flag not in MEDMNIST_2D:
        known = ", ".join(f"medmnist:{f}" for f in MEDMNIST_2D)
        raise click.BadParameter(f"'{name}' cannot be downloaded by this command; downloadable: {known}. "
                                 f"For the others see docs/datasets.md (registration or licence needed).",
                                 param_hint="NAME")
    target = (dest or default_data_dir() / "medmnist") / file_name(flag, int(size))
    expected = md5 or MEDMNIST_2D[flag]["md5"][int(size)]
    source = url or medmnist_url(flag, int(size))
    click.echo(f"downloading {source}\n  -> {target}", err=True)
    state: dict = {}

    def progress(done: int, total: int | None) -> None:
        if "bar" not in state:
            state["bar"] = click.progressbar(length=total or 0, label=target.name, file=sys.stderr)
            state["bar"].__enter__()
            state["last"] = 0
            state["bar"].update(done)
        else:
            state["bar"].update(done - state["last"])
        state["last"] = done

    try:
        result = download(source, target, expected, progress)
    except DownloadError as error:
        raise click.ClickException(str(error)) from None
    finally:
        if "bar" in state:
            state["bar"].__exit__(None, None, None)
    if result.skipped:
        click.echo(f"already present, md5 ok: {result.path}")
    else:
        resumed = f" (resumed at {result.resumed_from} bytes)" if result.resumed_from else ""
        click.echo(f"downloaded {result.path}{resumed}; md5 {result.md5} ok")


def _evaluator_help(name: str) -> str:
    try:
        from evaluators.registry import EVALUATORS
        from benchmark.options import show
        spec = EVALUATORS.get(name)
        schema = spec.option_schema or {}
        lines = [f"{k}={show(v)}" + (f"  ({schema[k].describe()})" if k in schema else "") for k, v in spec.defaults.items()]
        presets = ", ".join(spec.presets) or "none"
        return (f"{spec.description}\n\nOptions (-o KEY=VALUE, value as JSON; default, then what is allowed):\n\n\b\n"
                + "\n".join(lines) + f"\n\nPresets: {presets}")
    except Exception as error:  # help must never fail
        return f"(could not load evaluator '{name}': {error})"


def run_evaluator_command(evaluator: str, model: str, dataset: str, root: Path | None, preset: str | None,
                          option: tuple[str, ...], dataset_option: tuple[str, ...], variant: str | None, **common) -> None:
    """Shared body of every evaluator command: one cell, then print its headline."""
    _setup_logging(common.pop("verbose"))
    from benchmark.runner import Cell, Runner
    from datasets.registry import DATASETS
    overrides = _parse_pairs(option, "--option")
    checkpoint, key_prefix = common.pop("checkpoint"), common.pop("key_prefix")

    def action():
        from evaluators.registry import EVALUATORS
        EVALUATORS.get(evaluator).resolve_options(preset, overrides)  # bad options fail before any data is read
        dataset_name = DATASETS.resolve(dataset)
        settings = _settings(roots={dataset_name: root} if root else {},
                             dataset_options={dataset_name: _parse_pairs(dataset_option, "--dataset-option")}, **common)
        model_name = _resolve_local_model(model, checkpoint, key_prefix)
        return Runner(settings).run(Cell(model_name, dataset_name, evaluator, preset=preset, overrides=overrides,
                                         variant=variant))
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


@cli.group()
def pretrain() -> None:
    """In-domain contrastive pretraining (SimCLR, SupCon) of any registered encoder on a dataset.

    The result is registered as a new encoder (kept in $MEDTRANSFER_CACHE/local_encoders.json),
    usable at once by every evaluator. Rerunning the same command resumes a killed run.
    Several GPUs: torchrun --nproc_per_node N cli.py pretrain simclr ...
    """


def _pretrain_options(func: Callable) -> Callable:
    options = [
        click.option("--dataset", "-d", required=True, help="Dataset to pretrain on (see `cli.py datasets`)."),
        click.option("--root", type=click.Path(path_type=Path), default=None, help="Dataset files (for datasets that need them)."),
        click.option("--dataset-option", multiple=True, help="Dataset option KEY=VALUE."),
        click.option("--init", "init", required=True,
                     help="Encoder to start from: <arch>-random for random init (e.g. resnet18-random), or any registered encoder."),
        click.option("--epochs", type=click.IntRange(1), required=True, help="Training epochs over the chosen images."),
        click.option("--name", required=True, help="Name to register the pretrained encoder under (e.g. resnet18-simclr-ham)."),
        click.option("--image-size", type=click.IntRange(16), default=None,
                     help="Training resolution, also the new encoder's input size [default: the init encoder's]."),
        click.option("--batch-size", type=click.IntRange(2), default=256, show_default=True,
                     help="Global batch (images; each gives two views), split across DDP ranks."),
        click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Softmax temperature [default: 0.5 for simclr, 0.1 for supcon]."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
                     help="Peak AdamW learning rate (warm-up then cosine)."),
        click.option("--weight-decay", type=click.FloatRange(min=0), default=1e-4, show_default=True, help="AdamW weight decay."),
        click.option("--balanced", is_flag=True, help="Class-balanced batches (each class equally likely; uses labels)."),
        click.option("--split", type=click.Choice(["train", "train+val", "all"]), default="train", show_default=True,
                     help="Images to pretrain on; 'all' includes test images (transductive, simclr only)."),
        click.option("--split-seed", type=int, default=0, show_default=True,
                     help="Seed of the generated split (use the --seed your evaluations use)."),
        click.option("--split-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     help="CSV image_id,split to use instead of official/generated splits."),
        click.option("--seed", type=int, default=0, show_default=True, help="Training seed (head init, batch order, views)."),
        click.option("--projection-dim", type=click.IntRange(1), default=128, show_default=True, help="Projection head output size."),
        click.option("--crop-scale-min", type=click.FloatRange(0.01, 1.0), default=0.2, show_default=True,
                     help="Smallest random-resized-crop area (fraction of the image)."),
        click.option("--results", "results_dir", type=click.Path(path_type=Path), default=DEFAULT_RESULTS, show_default=True,
                     help="Results folder whose split files are used (so evaluation splits match)."),
        click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
                     help="Where checkpoints and decoded images go (default $MEDTRANSFER_CACHE or ~/.cache/medtransfer)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N (torchrun: one GPU per rank)."),
        click.option("--workers", type=click.IntRange(0), default=None, help="Image-decoding workers (default: cores - 1, max 8)."),
        click.option("--weights-dir", type=click.Path(path_type=Path), default=None, help="Folder searched first for the init checkpoint."),
        click.option("--trust-checkpoint", is_flag=True, help="Allow init checkpoints that need full unpickling."),
        click.option("--overwrite", is_flag=True, help="Discard a previous run (and registration) under this name."),
        click.option("-v", "--verbose", count=True, help="-v info, -vv debug logging."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _pretrain_device(device: str):
    from benchmark.device import resolve_device
    from pretrained.ssl import distributed
    try:
        return distributed.init_from_env(resolve_device(device))
    except (ValueError, RuntimeError) as error:
        raise click.BadParameter(str(error), param_hint="--device") from None


def _epoch_reporter(context, epochs: int) -> Callable[[int, float], None]:
    import time
    start = time.perf_counter()

    def report(epoch: int, loss: float) -> None:
        if context.is_main:
            click.echo(f"epoch {epoch}/{epochs}: loss {loss:.4f} ({time.perf_counter() - start:.0f} s)", err=True)
    return report


def run_pretrain_command(method: str, dataset: str, root: Path | None, dataset_option: tuple[str, ...], init: str,
                         epochs: int, name: str, image_size: int | None, batch_size: int, temperature: float | None,
                         lr: float, weight_decay: float, balanced: bool, split: str, split_seed: int,
                         split_file: Path | None, seed: int, projection_dim: int, crop_scale_min: float,
                         results_dir: Path, cache_dir: Path | None, device: str, workers: int | None,
                         weights_dir: Path | None, trust_checkpoint: bool, overwrite: bool, verbose: int) -> None:
    """Shared body of `pretrain simclr` and `pretrain supcon`."""
    _setup_logging(verbose)
    from benchmark.device import default_workers
    from datasets.registry import DATASETS
    from pretrained.encoder import LoadOptions
    from pretrained.registry import ENCODERS
    from pretrained.ssl.augment import AugmentConfig
    from pretrained.ssl.pipeline import pretrain_and_register
    from pretrained.ssl.trainer import PretrainConfig
    from benchmark.registry import UnknownNameError
    from pretrained.local_registry import check_new_local_name
    try:
        init_name = ENCODERS.resolve(init)
    except UnknownNameError as error:
        raise click.BadParameter(str(error), param_hint="--init") from None
    try:  # before any training: a bad or taken name must not cost a run
        check_new_local_name(name)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--name") from None
    _check_locations(results_dir, cache_dir)
    _use_cache_dir(cache_dir)
    torch_device, context = _pretrain_device(device)
    options = LoadOptions(weights_dir=str(weights_dir) if weights_dir else None, trust_checkpoint=trust_checkpoint)

    def action():
        dataset_name = DATASETS.resolve(dataset)
        size = image_size or ENCODERS.get(init_name).build(options).preprocessing.input_size
        config = PretrainConfig(
            method=method, dataset=dataset_name, init=init_name, epochs=epochs, image_size=size, batch_size=batch_size,
            temperature=temperature, lr=lr, weight_decay=weight_decay, balanced=balanced, split=split,
            split_seed=split_seed, seed=seed, projection_dim=projection_dim,
            augment=AugmentConfig(crop_scale=(crop_scale_min, 1.0)),
            dataset_options=tuple(sorted(_parse_pairs(dataset_option, "--dataset-option").items())))
        return pretrain_and_register(
            name, config, results_dir=results_dir, device=torch_device, cache_dir=cache_dir,
            roots={dataset_name: root} if root else {}, load_options=options, split_file=split_file,
            num_workers=default_workers() if workers is None else workers,
            on_epoch_end=_epoch_reporter(context, epochs), overwrite=overwrite)

    outcome = _run_user_action(action)
    if context.is_main:
        result = outcome.result
        if result is not None and result.start_epoch:
            click.echo(f"resumed after epoch {result.start_epoch}", err=True)
        click.echo(f"registered encoder '{outcome.name}' ({method} on {dataset}, final loss "
                   f"{outcome.pretraining['final_loss']:.4f})")
        click.echo(f"  checkpoint: {outcome.checkpoint} (sha256 {outcome.sha256[:16]}...)")
        click.echo(f"  evaluate:   python cli.py linear --model {outcome.name} --dataset {dataset}")


def _make_pretrain_command(method: str, summary: str) -> click.Command:
    @_pretrain_options
    def command(**kwargs) -> None:
        run_pretrain_command(method, **kwargs)
    command.__doc__ = summary
    return pretrain.command(method)(command)


_make_pretrain_command("simclr", """SimCLR (NT-Xent over two augmented views; labels unused).

    Example: python cli.py pretrain simclr --dataset synthderm --init resnet18-random --epochs 50 --image-size 64 --name resnet18-simclr-mine
    """)
_make_pretrain_command("supcon", """Supervised contrastive (Khosla et al.): views of one class are positives (uses train labels).

    Example: python cli.py pretrain supcon --dataset synthderm --init resnet18-random --epochs 50 --balanced --name resnet18-supcon-mine
    """)


@pretrain.command("recipe")
@click.argument("name")
@click.option("--results", "results_dir", type=click.Path(path_type=Path), default=DEFAULT_RESULTS, show_default=True,
              help="Results folder whose split files are used.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug logging.")
def pretrain_recipe(name: str, results_dir: Path, device: str, verbose: int) -> None:
    """Make a built-in recipe encoder now (e.g. resnet18-simclr-synthderm; the main job does this itself)."""
    _setup_logging(verbose)
    from pretrained.ssl.recipes import RECIPES, ensure_recipe
    if name not in RECIPES:
        raise click.BadParameter(f"unknown recipe '{name}'; recipes: {', '.join(sorted(RECIPES))}", param_hint="NAME")
    _check_locations(results_dir, None)
    torch_device, context = _pretrain_device(device)
    sidecar = _run_user_action(lambda: ensure_recipe(name, results_dir=results_dir, device=torch_device,
                                                     on_epoch_end=_epoch_reporter(context, RECIPES[name].epochs)))
    click.echo(f"{name}: {sidecar.get('checkpoint_sha256', '?')[:16]}... final loss "
               f"{sidecar.get('pretraining', {}).get('final_loss', float('nan')):.4f}")


@cli.command()
@click.argument("protocol", type=click.Choice(["medmnist-v2"]))
@click.option("--dataset", "-d", default=None, help="MedMNIST dataset, e.g. medmnist:breastmnist (or --all).")
@click.option("--all", "all_sets", is_flag=True,
              help="Run every MedMNIST file in --root ({flag}.npz and {flag}_{size}.npz) and write a fidelity report.")
@click.option("--root", type=click.Path(path_type=Path), default=None, help="Folder (or .npz file) with the MedMNIST data.")
@click.option("--seeds", type=click.IntRange(1), default=3, show_default=True, help="Train seeds 0..N-1.")
@click.option("--arch", "archs", type=click.Choice(["resnet18", "resnet50"]), multiple=True,
              help="Repeat for both (default resnet18).")
@click.option("--size", "sizes", type=click.Choice(["28", "224"]), multiple=True,
              help="28: small-input ResNet; 224: images resized up (nearest), torchvision ResNet. Repeat for both "
                   "(default 28).")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Fewer epochs than the paper's 100 (smoke runs).")
@click.option("--tolerance", type=click.FloatRange(0, 1), default=0.03, show_default=True,
              help="|ours - published| accepted as reproduced.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None,
              help="Fidelity report markdown (CSV beside it); default with --all: RESULTS/fidelity/medmnist-v2.md.")
@click.option("--init-model", default=None, help="Train this encoder + linear head instead of the random-init ResNet.")
@click.option("--dataset-option", multiple=True, help="Dataset option KEY=VALUE.")
@common_run_options
def reproduce(protocol: str, dataset: str | None, all_sets: bool, root: Path | None, seeds: int, archs: tuple[str, ...],
              sizes: tuple[str, ...], epochs: int | None, tolerance: float, report_path: Path | None,
              init_model: str | None, dataset_option: tuple[str, ...], **common) -> None:
    """Run a published protocol and print our results (mean ± sd, each seed) next to the published ones.

    Verdicts: "reproduced" = |ours - published| <= tolerance; "within seed noise" = outside the tolerance
    but the published value lies in our mean ± 2 sd over seeds (ddof=1); else "lower" / "higher".
    The best of the paper's other methods is shown for context.

    Example: python cli.py reproduce medmnist-v2 --all --root DIR --size 28 --size 224 --device cuda
    """
    _setup_logging(common.pop("verbose"))
    common.pop("checkpoint"), common.pop("key_prefix")
    from benchmark.reproduce import (format_comparison, md5_note, medmnist_v2_comparison, report_rows, run_medmnist_v2,
                                     run_medmnist_v2_all, write_fidelity_report)
    archs, size_values = archs or ("resnet18",), tuple(int(s) for s in (sizes or ("28",)))
    if all_sets:
        if dataset or init_model or dataset_option:
            raise click.UsageError("--all runs the paper's ResNets on every file in --root: leave out --dataset, "
                                   "--init-model and --dataset-option")
        if root is None:
            raise click.UsageError("--all needs --root, the folder with the MedMNIST .npz files")
        settings = _run_user_action(lambda: _settings(roots={}, dataset_options={}, **common))
        rows, left_out = _run_user_action(lambda: run_medmnist_v2_all(
            settings, root, archs, size_values, seeds, epochs, tolerance, report=lambda line: click.echo(line, err=True)))
        markdown, csv = write_fidelity_report(rows, left_out, report_path or settings.results_dir / "fidelity" / protocol,
                                              tolerance)
        click.echo(markdown.read_text())
        click.echo(f"wrote {markdown} and {csv}", err=True)
        failed = sorted({row["dataset"] for row in rows if row["status"] == "error"})
        if failed:
            raise click.ClickException(f"{len(failed)} set(s) could not run: {', '.join(failed)} (reasons in {markdown})")
        return
    if dataset is None:
        raise click.UsageError("give --dataset (e.g. medmnist:breastmnist) or --all")
    from datasets.registry import DATASETS
    dataset_name = _run_user_action(lambda: DATASETS.resolve(dataset))
    settings = _run_user_action(lambda: _settings(roots={}, dataset_options={}, **common))
    options = _parse_pairs(dataset_option, "--dataset-option")
    rows = []
    for arch in archs:
        for size in size_values:
            outcome, record = _run_user_action(lambda: run_medmnist_v2(
                settings, dataset_name, arch, size, seeds, epochs, root=root, dataset_options=options,
                init_model=init_model))
            _print_outcome(outcome)
            resolved = record.protocol["resolved"]
            click.echo(f"{protocol}: {record.identity.encoder} on {record.identity.dataset} ({resolved['model']}), "
                       f"seeds {resolved['seeds']}, best epochs {resolved['best_epochs']}")
            if init_model:
                click.echo(f"note: the published rows are the paper's from-scratch {arch} at {size} px, shown for contrast")
            click.echo(format_comparison(medmnist_v2_comparison(record, arch, size, tolerance)))
            if md5_note(record):
                click.echo(md5_note(record))
            click.echo(f"record: {outcome.path}", err=True)
            rows.extend(report_rows(record, outcome, arch, size, tolerance))
    if report_path is not None:
        markdown, csv = write_fidelity_report(rows, [], report_path, tolerance)
        click.echo(f"wrote {markdown} and {csv}", err=True)


@cli.command()
@click.option("--results", "results_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=DEFAULT_RESULTS, show_default=True, help="Results folder to aggregate (must exist).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Markdown file (CSV written beside it).")
@click.option("--print/--no-print", "show", default=True, help="Print the markdown.")
def leaderboard(results_dir: Path, out: Path | None, show: bool) -> None:
    """Aggregate result records into markdown and CSV leaderboards (unreadable records are reported and skipped)."""
    from benchmark.atomic import check_writable_folder
    from benchmark.leaderboard import write_leaderboard
    try:
        check_writable_folder(out.parent if out else results_dir, create=out is not None)
    except ValueError as error:
        raise click.BadParameter(f"{error} (or pass --out FILE elsewhere)" if out is None else str(error),
                                 param_hint="--out" if out else "--results") from None
    markdown, csv, board = write_leaderboard(results_dir, out)
    if show:
        click.echo(markdown.read_text())
    for path, reason in board.errors:
        click.echo(f"warning: skipped unreadable record {path}: {reason}", err=True)
    click.echo(f"wrote {markdown} and {csv}", err=True)


@cli.command()
@click.option("--results", "results_dir", type=click.Path(path_type=Path), default=DEFAULT_RESULTS, show_default=True,
              help="Results folder to report on.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder [default: RESULTS/report].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the paired bootstraps.")
def report(results_dir: Path, out: Path | None, seed: int) -> None:
    """Write a self-contained report folder: index.html, leaderboard.md/.csv, LaTeX tables, figures."""
    from benchmark.report import write_report
    if not (results_dir / "records").is_dir():
        raise click.BadParameter(f"{results_dir} has no records/ folder; run an evaluator or `cli.py benchmark` first",
                                 param_hint="--results")
    written = write_report(results_dir, out, seed=seed)
    for path, reason in written.board.errors:
        click.echo(f"warning: skipped corrupt record {path}: {reason}", err=True)
    click.echo(f"wrote {written.index} ({len(written.latex)} tables, {len(written.figures)} figures)")


@cli.command()
@click.argument("encoder_a")
@click.argument("encoder_b")
@click.option("--results", "results_dir", type=click.Path(path_type=Path), default=DEFAULT_RESULTS, show_default=True,
              help="Results folder holding both encoders' records.")
@click.option("--dataset", "-d", default=None, help="Only this dataset (the record's dataset name).")
@click.option("--evaluator", "-e", default=None, help="Only this evaluator.")
@click.option("--variant", default=None, help="Only this variant (preset name, e.g. quick).")
@click.option("--n-boot", type=click.IntRange(100), default=2000, show_default=True, help="Paired bootstrap resamples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def compare(encoder_a: str, encoder_b: str, results_dir: Path, dataset: str | None, evaluator: str | None,
            variant: str | None, n_boot: int, seed: int, as_json: bool) -> None:
    """Paired difference ENCODER_A - ENCODER_B in the primary metric, on the same test items.

    For every (evaluator, variant, dataset) both encoders have a record of: the difference with
    its 95 % CI and p-value (paired stratified bootstrap; DeLong for AUROC; paired t over the same
    episodes for few-shot). Records of different protocols are never paired. See docs/comparison.md.
    """
    from benchmark import comparison
    from benchmark.predictions import PredictionsError
    from benchmark.records import load_records
    from benchmark.registry import UnknownNameError
    from evaluators.registry import EVALUATORS
    from pretrained.registry import ENCODERS

    def canonical(registry, name: str | None) -> str | None:  # aliases resolve; unregistered names pass (old records)
        try:
            return registry.resolve(name) if name else name
        except UnknownNameError:
            return name
    encoder_a, encoder_b = canonical(ENCODERS, encoder_a), canonical(ENCODERS, encoder_b)
    evaluator = canonical(EVALUATORS, evaluator)
    records, errors = load_records(results_dir)
    for path, reason in errors:
        click.echo(f"warning: skipped unreadable record {path}: {reason}", err=True)
    try:
        pairs = comparison.matching_pairs(records, encoder_a, encoder_b, dataset, evaluator, variant)
    except comparison.ComparisonError as error:
        raise click.ClickException(str(error)) from None
    rows, failures = [], []
    for a, b in pairs:
        identity = a.identity
        where = f"{identity.evaluator}/{identity.variant} on {identity.dataset} ({a.primary_metric})"
        try:
            result = comparison.compare(a, b, results_dir, n_boot=n_boot, seed=seed)
        except (comparison.ComparisonError, PredictionsError) as error:
            failures.append(f"{where}: not paired: {error}")
            continue
        rows.append({"evaluator": identity.evaluator, "variant": identity.variant, "dataset": identity.dataset,
                     "encoder_a": encoder_a, "encoder_b": encoder_b, **result.to_dict()})
        if not as_json:
            click.echo(f"{where}: {encoder_a} - {encoder_b} = {result.difference:+.4f} "
                       f"[{result.ci[0]:+.4f}, {result.ci[1]:+.4f}], p = {result.p_value:.4g}")
            click.echo(f"  {encoder_a} {result.value_a:.4f}, {encoder_b} {result.value_b:.4f}; {result.method}, n = {result.n}")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    for line in failures:
        click.echo(line, err=True)
    if not rows:
        raise click.ClickException("nothing could be paired" if len(failures) != 1 else failures[0])


@cli.command()
@click.option("--model", "models_", multiple=True, help="Encoders (default: every default encoder usable offline).")
@click.option("--dataset", "datasets_", multiple=True, help="Datasets (default: synthderm).")
@click.option("--evaluator", "evaluators_", multiple=True, help="Evaluators (default: every one with a main-job preset).")
@click.option("--root", "roots", multiple=True, help="NAME=DIR for datasets that need files.")
@click.option("--shard", default=None, help="Run shard I/N of the cell list (0-based), e.g. for a SLURM array.")
@click.option("--dry-run", is_flag=True,
              help="List each cell and what a run would do (run, skip, recompute, refuse: with why); run nothing.")
@common_run_options
def benchmark(models_, datasets_, evaluators_, roots, shard, dry_run, **common) -> None:
    """The main job: encoders x datasets x evaluators into records, then the leaderboard.

    A cell whose record was made under the same protocol is skipped, so a killed run resumes where
    it stopped; a record of another protocol under the same name is refused before any compute
    (--overwrite replaces it). Concurrent runs on one --results folder share the cells. Without
    --image-size the main job runs every encoder at 128 px (the embedded data's resolution, and a
    2-core CPU budget; records of variant <preset>-128px); pass --image-size 0 for each encoder's
    native resolution.
    """
    _setup_logging(common.pop("verbose"))
    checkpoint, key_prefix = common.pop("checkpoint"), common.pop("key_prefix")
    # every argument is checked before anything slow (recipe pretraining, planning, extraction)
    shard_spec = _parse_shard(shard)
    root_map = {k: Path(v) for k, v in _parse_pairs(roots, "--root").items()}
    if common["image_size"] is None:
        common["image_size"] = MAIN_JOB_IMAGE_SIZE
    elif common["image_size"] == 0:
        common["image_size"] = None
    from benchmark.leaderboard import write_leaderboard
    from benchmark.main_job import plan_cells, prepare_recipe_encoders, recipe_exclusions
    from benchmark.runner import Runner, shard_cells
    settings = _run_user_action(lambda: _settings(roots=root_map, dataset_options={}, write=not dry_run, **common))
    models_ = tuple(_run_user_action(lambda: [_resolve_local_model(m, checkpoint, key_prefix) for m in models_]))
    runner = Runner(settings, read_only=dry_run)

    def report(line: str) -> None:
        click.echo(line, err=True)
    excluded = _run_user_action(lambda: recipe_exclusions(list(models_), runner, report=report))
    cells = _run_user_action(lambda: plan_cells(list(models_), list(datasets_), list(evaluators_), settings.load_options,
                                                exclude=excluded))
    cells = shard_cells(cells, shard_spec)
    plans = [_run_user_action(lambda: runner.plan(cell)) for cell in cells]  # before any compute
    click.echo(f"{len(cells)} cell(s); results in {settings.results_dir}", err=True)
    to_compute = [plan.identity.encoder for plan in plans if plan.action in ("run", "recompute")]
    if dry_run:
        for plan in plans:
            identity = plan.identity
            why = f": {plan.reason}" if plan.reason else ""
            click.echo(f"[{plan.action}] {identity.evaluator}/{identity.variant} {identity.encoder} on {identity.dataset}{why}")
        _run_user_action(lambda: prepare_recipe_encoders(to_compute, runner, dry_run=True, report=report))
        counts = {action: sum(plan.action == action for plan in plans) for action in ("run", "skip", "recompute", "refuse")}
        click.echo(", ".join(f"{n} {action}" for action, n in counts.items()), err=True)
        return
    refused = [plan for plan in plans if plan.action == "refuse"]
    if refused:
        more = f" ({len(refused) - 1} more cell(s) refused; list them with --dry-run)" if len(refused) > 1 else ""
        raise click.UsageError(refused[0].reason + more)
    _run_user_action(lambda: prepare_recipe_encoders(to_compute, runner, report=report))
    deferred = []
    for number, plan in enumerate(plans, 1):
        identity = plan.identity
        click.echo(f"[{number}/{len(plans)}] {identity.evaluator}/{identity.variant} {identity.encoder} on "
                   f"{identity.dataset}", err=True)
        outcome = _run_user_action(lambda: runner.run(plan.cell, wait=False))
        if outcome.status == "busy":  # another run on this results folder is computing it
            click.echo("  another run is computing this cell; back to it at the end", err=True)
            deferred.append(plan)
            continue
        _print_outcome(outcome)
    for plan in deferred:
        _print_outcome(_run_user_action(lambda: runner.run(plan.cell, wait=True)))
    from benchmark.distributed import is_main_process
    if is_main_process():
        from benchmark.report import write_report
        written = write_report(settings.results_dir)
        markdown, csv, board = write_leaderboard(settings.results_dir, board=written.board)
        click.echo(markdown.read_text())
        for path, reason in board.errors:
            click.echo(f"warning: skipped unreadable record {path}: {reason}", err=True)
        click.echo(f"wrote {markdown}, {csv} and the report {written.index}", err=True)


if __name__ == "__main__":
    cli()
