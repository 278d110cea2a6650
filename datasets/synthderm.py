"""``synthderm``: the embedded default dataset, procedurally generated from a seed (no download).

The images come from :mod:`datasets.synthderm_render`; they are rendered once per parameter set
and kept in the cache folder (``$MEDTRANSFER_CACHE/synthderm``), so later runs load them in a
second. Groups are lesions (several images per lesion), subgroups are Fitzpatrick skin type,
sex and body site.
"""
from __future__ import annotations

import hashlib
import logging
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.atomic import atomic_write
from benchmark.features import default_cache_dir
from benchmark.options import Int
from datasets.base import ArrayImageDataset, DatasetSpec
from datasets.common import check_options, declared_options
from datasets.registry import DATASETS
from datasets import synthderm_render
from datasets.synthderm_render import SYNTHDERM_CLASSES, generate_synthderm

log = logging.getLogger(__name__)

SYNTHDERM_DEFAULTS = {"seed": 0, "n_lesions": 600, "image_size": 128}
# n_lesions >= 84: every one of the 7 classes gets >= 12 lesions (the renderer's min_lesions_per_class)
SYNTHDERM_SCHEMA = {"seed": Int(min=0), "n_lesions": Int(min=84), "image_size": Int(min=16)}


def _renderer_version() -> str:
    """Short hash of the renderer's source: a changed generator never reuses old cached images."""
    source = Path(synthderm_render.__file__).read_bytes()
    return hashlib.sha256(source).hexdigest()[:12]


def _cache_file(seed: int, n_lesions: int, image_size: int) -> Path:
    name = f"synthderm_{_renderer_version()}_seed{seed}_n{n_lesions}_s{image_size}.npz"
    return default_cache_dir() / "synthderm" / name


def load_synthderm_arrays(seed: int, n_lesions: int, image_size: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Render (or read back from the cache) the images [N, S, S, 3] and their metadata.

    An unreadable cache file (truncated by a kill, foreign) is rendered again and replaced; a
    cache that cannot be written costs a warning, not the run.
    """
    path = _cache_file(seed, n_lesions, image_size)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                images = data["images"]
                meta = pd.DataFrame({k[5:]: data[k] for k in data.files if k.startswith("meta_")})
            if images.ndim == 4 and len(images) == len(meta) and "image_id" in meta.columns:
                return images, meta
            log.warning("synthderm cache %s does not hold a rendered set; rendering again", path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            log.warning("synthderm cache %s unreadable (%s); rendering again", path, error)
    images, meta = generate_synthderm(seed=seed, n_lesions=n_lesions, image_size=image_size)
    columns = {f"meta_{c}": _plain_array(meta[c]) for c in meta.columns}
    try:
        atomic_write(path, lambda handle: np.savez(handle, images=images, **columns))
    except OSError as error:
        log.warning("cannot write the synthderm cache %s (%s); it will be rendered again next time", path, error)
    return images, meta


def _plain_array(column: pd.Series) -> np.ndarray:
    """A column as a non-object array (strings as unicode) so the cache loads with allow_pickle=False."""
    array = column.to_numpy()
    return array.astype(str) if array.dtype == object else array


def build_synthderm(root: Path | None, options: dict) -> ArrayImageDataset:
    check_options("synthderm", options, SYNTHDERM_DEFAULTS, common=())
    settings = declared_options("synthderm", options, SYNTHDERM_DEFAULTS, SYNTHDERM_SCHEMA)
    images, meta = load_synthderm_arrays(settings["seed"], settings["n_lesions"], settings["image_size"])
    table = pd.DataFrame({"image_id": meta["image_id"].astype(str), "label": meta["label"].astype(int),
                          "group": meta["lesion_id"].astype(str)})
    subgroups = []
    for column, name in (("fitzpatrick", "fitzpatrick"), ("sex", "sex"), ("localization", "site")):
        if column in meta.columns:
            table[name] = meta[column].to_numpy()
            subgroups.append(name)
    name = "synthderm" if settings == SYNTHDERM_DEFAULTS else (
        f"synthderm-n{settings['n_lesions']}-s{settings['image_size']}-seed{settings['seed']}")
    return ArrayImageDataset(name, table, list(SYNTHDERM_CLASSES), images, task="7-class dx (HAM10000 classes)",
                             subgroup_columns=tuple(subgroups), info={"primary_metric": "balanced_accuracy", **settings})


DATASETS.add("synthderm", DatasetSpec(
    name="synthderm", build=build_synthderm, needs_root=False,
    description="procedural dermoscopy-like images, 7 HAM10000 classes, Fitzpatrick I-VI, several images per lesion",
    tasks=("7-class dx",), source="generated (embedded)", licence="same as medtransfer", default_in_benchmark=True))
