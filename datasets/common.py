"""Helpers shared by the dataset loaders: roots, CSV reading, image lookup, tasks, subgroups.

Conventions every loader follows (see docs/datasets.md):

- ``--root DIR`` points at the unpacked download; without it ``$MEDTRANSFER_DATA/<folder>`` is
  tried (default ``~/.cache/medtransfer/data/<folder>``).
- The task is the dataset option ``task`` (``--dataset-option task=melanoma``); the first task
  of a dataset is its default. The built dataset's name is the registry name plus every
  non-default option (``ham10000-melanoma``), so records of different tasks never collide.
- Low-data training subsets are the options ``low_data`` (fraction of train, e.g. ``0.01``) and
  ``low_data_seed``; they are drawn from the train split only (:func:`datasets.splits.resolve_splits`).
- Subgroup columns use the names ``fitzpatrick``, ``sex``, ``age`` (binned), ``site``; missing
  values are ``None`` so per-subgroup metrics skip them.
- ``dataset.info["primary_metric"]`` is ``"auroc"`` for binary tasks, else ``"balanced_accuracy"``.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from benchmark.options import Check, OptionError, validate_options
from datasets.base import DatasetError, FileImageDataset

log = logging.getLogger(__name__)

DATA_ENV = "MEDTRANSFER_DATA"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
AGE_BINS = ((0, 20, "0-19"), (20, 40, "20-39"), (40, 60, "40-59"), (60, 80, "60-79"), (80, 200, "80+"))
COMMON_OPTIONS = ("task", "low_data", "low_data_seed")


def default_data_dir() -> Path:
    """``$MEDTRANSFER_DATA`` or ``~/.cache/medtransfer/data``: where downloads go and roots default to."""
    return Path(os.environ.get(DATA_ENV, "~/.cache/medtransfer/data")).expanduser()


def resolve_root(name: str, root: Path | None, folder: str, expected: str) -> Path:
    """The dataset folder: ``root`` if given, else ``$MEDTRANSFER_DATA/<folder>``; must exist."""
    candidate = Path(root).expanduser() if root is not None else default_data_dir() / folder
    if not candidate.exists():
        where = f"--root {candidate}" if root is not None else f"no --root given and {candidate} does not exist"
        raise DatasetError(f"dataset '{name}': {where}. Pass --root pointing at the folder that holds {expected} "
                           f"(see docs/datasets.md for where to get it).")
    return candidate


def find_first(root: Path, candidates: Iterable[str]) -> Path | None:
    """The first existing ``root / candidate`` (files or folders), or None."""
    for candidate in candidates:
        path = root / candidate
        if path.exists():
            return path
    return None


def read_csv(path: Path, required: Iterable[str], dataset: str, sep: str = ",", **kwargs) -> pd.DataFrame:
    """Read a CSV as strings; a parse error or a missing column is a :class:`DatasetError` naming the fix."""
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, **kwargs)
    except FileNotFoundError:
        raise DatasetError(f"dataset '{dataset}': file not found: {path}") from None
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DatasetError(f"dataset '{dataset}': cannot parse {path}: {error}. The file is malformed or "
                           f"truncated; re-download it.") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DatasetError(f"dataset '{dataset}': {path.name} lacks column(s) {missing}; it has "
                           f"{list(frame.columns)[:30]}. Is this the right file (see docs/datasets.md)?")
    if frame.empty:
        raise DatasetError(f"dataset '{dataset}': {path} has a header but no rows")
    return frame


def check_unique(values: pd.Series, what: str, dataset: str, path: Path) -> None:
    """Raise when ``values`` has duplicates, naming a few."""
    duplicated = values[values.duplicated(keep=False)]
    if len(duplicated):
        examples = sorted(set(duplicated))[:5]
        raise DatasetError(f"dataset '{dataset}': {path.name} lists {what} {examples} more than once "
                           f"({duplicated.nunique()} duplicated); each must appear once. Remove the duplicate rows.")


class ImageIndex:
    """Case-insensitive lookup of image files below one or more folders.

    ``lookup("NEL/Nel026.JPG")`` matches ``nel/nel026.jpg``; ``lookup("ISIC_0000001")`` (no suffix)
    matches ``ISIC_0000001.jpg`` or ``.png``. Relative paths match on their tail, bare names on the
    file name, so images may sit flat or in sub-folders (``images/imgs_part_1/...``).
    """

    def __init__(self, folders: Iterable[Path]):
        self.folders = [Path(f) for f in folders if Path(f).is_dir()]
        self._by_name: dict[str, list[Path]] = {}
        self._by_stem: dict[str, list[Path]] = {}
        self._by_rel: dict[str, Path] = {}
        for folder in self.folders:
            for dirpath, _, filenames in os.walk(folder):
                relative_dir = os.path.relpath(dirpath, folder).replace(os.sep, "/").lower()
                relative_dir = "" if relative_dir == "." else relative_dir + "/"
                for filename in filenames:
                    if filename.startswith("._"):  # macOS resource forks in zips
                        continue
                    path = Path(dirpath) / filename
                    lower = filename.lower()
                    self._by_name.setdefault(lower, []).append(path)
                    stem, suffix = os.path.splitext(lower)
                    if suffix in IMAGE_SUFFIXES:
                        self._by_stem.setdefault(stem, []).append(path)
                    self._by_rel[relative_dir + lower] = path

    def __len__(self) -> int:
        return len(self._by_rel)

    def lookup(self, name: str) -> Path | None:
        key = str(name).strip().replace("\\", "/").lower().lstrip("./")
        if not key:
            return None
        if key in self._by_rel:
            return self._by_rel[key]
        tail = key.rsplit("/", 1)[-1]
        matches = self._by_name.get(tail) or self._by_stem.get(tail) or []
        if "/" in key and len(matches) > 1:
            matches = [m for m in matches if str(m).replace(os.sep, "/").lower().endswith(key)] or matches
        return matches[0] if matches else None


def resolve_images(names: Iterable[str], index: ImageIndex, fallback: Path) -> tuple[list[str], int]:
    """Paths for ``names`` (missing ones become ``fallback / name`` so checks can report them), and the miss count."""
    paths, missing = [], 0
    for name in names:
        found = index.lookup(name)
        if found is None:
            missing += 1
            paths.append(str(fallback / str(name)))
        else:
            paths.append(str(found))
    return paths, missing


def age_bin(value: Any) -> str | None:
    """Age in years (number or text such as ``"58"``, ``"058Y"``) -> a 20-year bin, or None when unknown."""
    if value is None:
        return None
    match = re.search(r"\d+(\.\d+)?", str(value))
    if not match:
        return None
    age = float(match.group(0))
    for low, high, label in AGE_BINS:
        if low <= age < high:
            return label
    return None


def clean_values(values: Iterable[Any], mapping: dict[str, str] | None = None) -> np.ndarray:
    """Subgroup values as an object array: stripped, lowercased strings, mapped, ``None`` when missing."""
    out = []
    for value in values:
        text = "" if value is None else str(value).strip()
        if text.lower() in ("", "nan", "none", "unknown", "null", "na", "n/a", "-1"):
            out.append(None)
            continue
        text = text.lower()
        out.append(mapping.get(text, text) if mapping else text)
    return np.array(out, dtype=object)


def fitzpatrick_values(values: Iterable[Any]) -> np.ndarray:
    """Fitzpatrick skin types 1..6 as strings ``"1"``..``"6"`` (``None`` when missing or out of range)."""
    out = []
    for value in values:
        try:
            number = int(float(str(value).strip()))
        except ValueError:
            number = 0
        out.append(str(number) if 1 <= number <= 6 else None)
    return np.array(out, dtype=object)


def primary_metric_for(n_classes: int) -> str:
    return "auroc" if n_classes == 2 else "balanced_accuracy"


def check_options(dataset: str, options: dict, allowed: Iterable[str], common: Iterable[str] = COMMON_OPTIONS) -> None:
    """Unknown dataset options are an error (a typo must not silently change nothing). ``common``: the
    shared options (task, low_data) this loader implements; ``name`` and ``intensity_window`` always exist."""
    allowed = set(allowed) | set(common) | {"name", "intensity_window"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise DatasetError(f"dataset '{dataset}' has no option(s) {unknown}; options: {sorted(allowed)}")


def declared_options(dataset: str, options: dict, defaults: dict[str, Any], schema: dict[str, Check]) -> dict:
    """``defaults`` updated by the options they name, each validated and normalised by ``schema``
    (benchmark/options.py); a bad value is a one-line DatasetError naming the option and the range."""
    values = {**defaults, **{k: v for k, v in options.items() if k in defaults}}
    try:
        return validate_options(f"dataset '{dataset}'", values, schema)
    except OptionError as error:
        raise DatasetError(f"{error}. Set it with --dataset-option KEY=VALUE") from None


def choose_option(dataset: str, options: dict, key: str, choices: dict[str, str]) -> str:
    """Option ``key`` (default: the first of ``choices``), lower-cased and validated against ``choices``
    (value -> description); a bad value is a DatasetError that lists the choices."""
    value = str(options.get(key, next(iter(choices)))).strip().lower()
    if value not in choices:
        listing = "; ".join(f"{k}: {v}" for k, v in choices.items())
        raise DatasetError(f"dataset '{dataset}' has no {key} '{value}'. Choices: {listing}. "
                           f"Choose one with --dataset-option {key}=VALUE")
    return value


def choose_task(dataset: str, options: dict, tasks: dict[str, str]) -> str:
    """The ``task`` option (default: the first of ``tasks``), validated against ``tasks`` (name -> description)."""
    return choose_option(dataset, options, "task", tasks)


def low_data_settings(dataset: str, options: dict) -> dict | None:
    """``{"fraction", "seed"}`` from the options ``low_data`` (0 < f < 1, or ``1pct``/``10pct``) and ``low_data_seed``."""
    if "low_data" not in options or options["low_data"] in (None, "", "none", "full", 1, 1.0):
        if "low_data_seed" in options and "low_data" not in options:
            raise DatasetError(f"dataset '{dataset}': low_data_seed needs low_data (e.g. --dataset-option low_data=0.01)")
        return None
    raw = str(options["low_data"]).strip().lower()
    try:
        fraction = float(raw[:-3]) / 100 if raw.endswith("pct") else float(raw)
    except ValueError:
        fraction = -1.0
    if not 0 < fraction < 1:
        raise DatasetError(f"dataset '{dataset}': low_data must be a fraction of train in (0, 1) such as 0.01, "
                           f"or 1pct / 10pct; got '{options['low_data']}'")
    try:
        seed = int(options.get("low_data_seed", 1))
    except (TypeError, ValueError):
        raise DatasetError(f"dataset '{dataset}': low_data_seed must be an integer") from None
    return {"fraction": fraction, "seed": seed}


def built_name(base: str, task: str, default_task: str, extra: Iterable[str] = (), low_data: dict | None = None,
               options: dict | None = None) -> str:
    """Registry name plus every non-default choice: ``ham10000-melanoma``, ``isic2019-melanoma-low1pct-seed3``."""
    if options and options.get("name"):
        return str(options["name"])
    parts = [base] + ([task] if task != default_task else []) + [p for p in extra if p]
    if low_data:
        parts.append(f"low{low_data['fraction'] * 100:g}pct-seed{low_data['seed']}")
    return "-".join(parts)


def encode(values: Iterable[str], classes: list[str]) -> np.ndarray:
    mapping = {c: i for i, c in enumerate(classes)}
    return np.array([mapping[v] for v in values], dtype=np.int64)


class AnnotatedFileImageDataset(FileImageDataset):
    """A file dataset whose rows may carry lesion bounding boxes (columns ``box_left/top/right/bottom``).

    Boxes are in pixel coordinates of the image file as stored on disk (x to the right, y down).
    """

    BOX_COLUMNS = ("box_left", "box_top", "box_right", "box_bottom")

    @property
    def has_boxes(self) -> bool:
        return all(c in self.table.columns for c in self.BOX_COLUMNS)

    def lesion_box(self, index: int) -> tuple[float, float, float, float] | None:
        """The saliency probe's hook: (x0, y0, x1, y1) in pixels of ``load_image(index)``, or None.

        The CSV values are used as pixel edges as given (HAM10000's ext CSV does not say whether
        right/bottom are inclusive; the difference is one pixel).
        """
        if not self.has_boxes:
            return None
        box = self.table.loc[index, list(self.BOX_COLUMNS)].to_numpy(dtype=np.float64)
        return None if np.isnan(box).any() else tuple(float(v) for v in box)

    def boxes(self, indices: np.ndarray | None = None, relative: bool = False) -> np.ndarray:
        """Lesion boxes float [N, 4] as (left, top, right, bottom); NaN rows where a box is unknown.

        ``relative=True`` divides by the image width/height (read from each file's header), giving
        fractions in [0, 1] that survive any resize of the whole image.
        """
        if not self.has_boxes:
            raise DatasetError(f"dataset '{self.name}' has no lesion boxes (for HAM10000, put "
                               f"HAM10000_metadata_ext.csv beside HAM10000_metadata.csv)")
        rows = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        boxes = self.table.loc[rows, list(self.BOX_COLUMNS)].to_numpy(dtype=np.float64)
        if relative:
            from PIL import Image
            for position, row in enumerate(rows):
                with Image.open(self.path(int(row))) as image:
                    width, height = image.size
                boxes[position] /= np.array([width, height, width, height], dtype=np.float64)
        return boxes
