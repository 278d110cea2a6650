"""Validate a dataset download: layout, CSVs, duplicates, missing and unreadable images, md5s.

``check_download(name, root)`` builds the dataset (which already rejects a missing or malformed
CSV, missing columns, duplicate ids and unknown labels with a precise message), then checks every
image file: present, decodable to the end (a truncated JPEG fails here), one row per file. The
report lists each problem with a count and a few examples; ``cli.py data check`` prints it.
"""
from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from datasets.base import (ArrayImageDataset, DatasetError, FileImageDataset, ImageDataset, UnreadableImageError,
                           open_image)
from datasets.intensity import array_mode, bit_depth, is_high_depth, to_rgb8
from datasets.registry import DATASETS

log = logging.getLogger(__name__)


@dataclass
class Problem:
    kind: str  # layout | missing | unreadable | duplicate-file | md5 | dropped | skipped | bit-depth
    message: str
    count: int = 1
    examples: list[str] = field(default_factory=list)
    severity: str = "error"  # error | warning


@dataclass
class CheckReport:
    dataset: str
    root: Path | None
    n_images: int = 0
    problems: list[Problem] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


def check_download(name: str, root: Path | None, options: dict | None = None, decode: bool = True,
                   workers: int = 2, progress: Callable[[str, int], Callable[[int], None]] | None = None,
                   max_examples: int = 5) -> CheckReport:
    """Check the files of dataset ``name`` under ``root``; never raises for problems in the data.

    ``progress(label, total)`` returns an ``update(n)`` callback (as the CLI's progress bars do).
    """
    spec = DATASETS.get(name)
    report = CheckReport(DATASETS.resolve(name), root)
    try:
        dataset = spec.build(Path(root) if root is not None else None, dict(options or {}))
    except DatasetError as error:
        report.problems.append(Problem("layout", str(error)))
        return report
    report.n_images = len(dataset)
    report.facts = _facts(dataset)
    _check_info(dataset, report, max_examples)
    if isinstance(dataset, FileImageDataset):
        _check_files(dataset, report, decode, workers, progress, max_examples)
    elif isinstance(dataset, ArrayImageDataset):
        _record_modes(report, Counter({array_mode(dataset.images): len(dataset)}), dataset)
    return report


def _record_modes(report: CheckReport, modes: Counter, dataset: ImageDataset) -> None:
    """Mode and bit-depth counts into the facts; a note on how >8-bit images are scaled, a warning when mixed."""
    report.facts["modes"] = dict(modes.most_common())
    depths = Counter()
    for mode, count in modes.items():
        depths[bit_depth(mode.split(" ")[0])] += count
    report.facts["bit_depths"] = {str(k): v for k, v in sorted(depths.items())}
    high = sum(count for mode, count in modes.items() if is_high_depth(mode.split(" ")[0]))
    report.facts["intensity_window"] = dataset.info.get("intensity_window", dataset.intensity_window)
    if high and len(depths) > 1:
        report.problems.append(Problem(
            "bit-depth", f"{high} of {sum(modes.values())} images have more than 8 bits per value and the others not "
                         f"(modes {dict(modes)}): they are scaled to 8 bits by a different rule "
                         f"(intensity_window={report.facts['intensity_window']}); check that this mix is intended",
            count=high, severity="warning"))


def _facts(dataset: ImageDataset) -> dict:
    facts = {"name": dataset.name, "task": dataset.task, "images": len(dataset),
             "groups": int(len(set(dataset.table["group"].astype(str)))), "class_counts": dataset.class_counts(),
             "official_splits": bool(dataset.has_official_splits), "subgroups": list(dataset.subgroup_columns)}
    if dataset.has_official_splits:
        facts["split_sizes"] = {str(k): int(v) for k, v in dataset.table["split"].value_counts().items()}
    return facts


def _check_info(dataset: ImageDataset, report: CheckReport, max_examples: int) -> None:
    md5 = dataset.info.get("md5")
    if isinstance(md5, dict) and md5.get("status") == "mismatch":
        report.problems.append(Problem("md5", f"{md5['file']} has md5 {md5['actual']}, the published md5 is "
                                              f"{md5['expected']}: not the published file (re-saved or changed)",
                                       severity="warning"))
    dropped = dataset.info.get("dropped")
    if isinstance(dropped, dict) and dropped.get("total"):
        kinds = {k: v for k, v in dropped.items() if k not in ("total", "examples")}
        examples = [e for values in dropped.get("examples", {}).values() for e in values][:max_examples]
        report.problems.append(Problem("dropped", f"{dropped['total']} row(s) dropped by the loader {kinds}",
                                       count=int(dropped["total"]), examples=examples, severity="warning"))
    skipped = dataset.info.get("skipped")
    if isinstance(skipped, dict) and skipped.get("total"):
        report.problems.append(Problem(
            "skipped", f"{skipped['total']} entries skipped: {skipped['hidden']} hidden (names starting with '.', "
                       f"__MACOSX), {skipped['not_image']} not images; they are not classes or images of the dataset",
            count=int(skipped["total"]), examples=list(skipped.get("examples", []))[:max_examples], severity="warning"))
    merged = dataset.info.get("merged_labels")
    if isinstance(merged, dict) and merged:
        report.problems.append(Problem(
            "merged-labels", "label spellings merged (merge_label_variants=true): "
                             + "; ".join(f"{', '.join(map(repr, v))} -> {k!r}" for k, v in merged.items()),
            count=len(merged), severity="warning"))


def _check_files(dataset: FileImageDataset, report: CheckReport, decode: bool, workers: int,
                 progress: Callable[[str, int], Callable[[int], None]] | None, max_examples: int) -> None:
    paths = dataset.table["path"].astype(str)
    repeated = paths[paths.duplicated(keep=False)]
    if len(repeated):
        report.problems.append(Problem("duplicate-file", "several rows point at the same image file",
                                       count=int(repeated.nunique()), examples=sorted(set(repeated))[:max_examples]))
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        report.problems.append(Problem(
            "missing", f"{len(missing)} of {len(paths)} image files are missing (download incomplete or wrong --root)",
            count=len(missing), examples=missing[:max_examples]))
    if not decode:
        return
    present = [p for p in paths if Path(p).is_file()]

    def check(path: str) -> tuple[str | None, str | None]:
        """(mode, None) for a usable image, (None, reason) otherwise."""
        try:
            image = open_image(Path(path))
            to_rgb8(image, dataset.intensity_window)  # non-finite float pixels fail here
        except UnreadableImageError as error:
            return None, str(error)
        except ValueError as error:
            return None, f"cannot use image {path}: {error}"
        return image.mode, None

    failures: list[str] = []
    modes: Counter = Counter()
    update = progress("decoding images", len(present)) if progress is not None and present else None
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for number, (mode, failure) in enumerate(pool.map(check, present, chunksize=32), 1):
            if failure is not None:
                failures.append(failure)
            else:
                modes[mode] += 1
            if update is not None and (number % 256 == 0 or number == len(present)):
                update(256 if number % 256 == 0 else number % 256)
    if failures:
        report.problems.append(Problem(
            "unreadable", f"{len(failures)} image file(s) cannot be decoded (truncated or not images); "
                          f"re-download them or remove their rows", count=len(failures), examples=failures[:max_examples]))
    if modes:
        _record_modes(report, modes, dataset)
