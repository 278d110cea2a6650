"""Grouped, stratified, seeded splits, saved to (and reused from) split files.

No group (lesion or patient) ever lands in two splits; every class is represented in every
split when it has enough groups; the assignment is a pure function of (labels, groups, seed,
fractions). Split files are CSVs ``image_id,group,label,split`` written atomically beside the
results so users can inspect them, and their sha256 enters the protocol hash.

Multi-label datasets stratify on a surrogate class (:func:`stratification_labels`: each image's
rarest positive finding, or "none"), and :func:`check_splits` requires every finding that has
positive and negative images to have both in every split (else its AUC is undefined there).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.atomic import atomic_write_text
from datasets.base import SPLITS, DatasetError, ImageDataset

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = {"train": 0.6, "val": 0.15, "test": 0.25}


def grouped_stratified_split(labels: np.ndarray, groups: np.ndarray, fractions: dict[str, float],
                             seed: int) -> np.ndarray:
    """Assign each sample to a split name, keeping groups whole and classes stratified.

    Each group takes its majority label; per class, groups are shuffled (seeded) and dealt to
    the splits so each split's image count approaches its fraction, every split getting at least
    one group of each class that has as many groups as there are splits.

    Args:
        labels: int [N]; groups: str [N]; fractions: split name -> fraction (sums to 1).
    Returns:
        str [N] split names.
    """
    names = list(fractions)
    weights = np.array([fractions[n] for n in names], dtype=float)
    if np.any(weights <= 0) or abs(weights.sum() - 1) > 1e-6:
        raise ValueError(f"split fractions must be positive and sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"label": labels, "group": groups.astype(str)})
    group_table = frame.groupby("group", sort=True).agg(
        label=("label", lambda s: s.value_counts().idxmax()), size=("label", "size"))
    assignment: dict[str, str] = {}
    for label in sorted(group_table["label"].unique()):
        members = group_table[group_table["label"] == label]
        order = rng.permutation(len(members))
        group_ids = members.index.to_numpy()[order]
        sizes = members["size"].to_numpy()[order]
        targets = weights * sizes.sum()
        filled = np.zeros(len(names))
        priority = np.argsort(targets, kind="stable")  # one group to each split first, smallest first
        for position, (group_id, size) in enumerate(zip(group_ids, sizes)):
            if position < len(names):
                choice = int(priority[position])
            else:
                choice = int(np.argmax(targets - filled))
            filled[choice] += size
            assignment[group_id] = names[choice]
    return frame["group"].map(assignment).to_numpy(dtype=object)


@dataclass
class SplitAssignment:
    """Which rows of a dataset belong to train / val / test, and where that came from."""

    split: np.ndarray  # str [N]
    source: str  # "official", "file:<path>", "generated"
    sha256: str

    def indices(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.split == name)


def stratification_labels(dataset: ImageDataset) -> np.ndarray:
    """int [N] classes to stratify on: the labels, or for multi-label data each image's rarest positive
    finding (index into ``classes``; ``len(classes)`` for an image with none), so rare findings spread
    over the splits."""
    if not dataset.is_multilabel:
        return dataset.labels
    matrix = dataset.label_matrix.astype(bool)
    order = np.argsort(matrix.sum(axis=0), kind="stable")  # findings, rarest first
    ordered = matrix[:, order]
    return np.where(ordered.any(axis=1), order[ordered.argmax(axis=1)], matrix.shape[1]).astype(np.int64)


def split_file_path(results_dir: Path, dataset: ImageDataset, seed: int, fractions: dict[str, float]) -> Path:
    tag = "-".join(f"{k}{v:g}" for k, v in fractions.items())
    return Path(results_dir) / "splits" / f"{dataset.name}__{dataset.manifest_hash()[:12]}__seed{seed}__{tag}.csv"


def resolve_splits(dataset: ImageDataset, results_dir: Path, seed: int = 0,
                   fractions: dict[str, float] | None = None, split_file: Path | None = None,
                   save: bool = True) -> SplitAssignment:
    """Official splits if the dataset has them, else a user split file, else generated and saved.

    A val split missing from official splits is carved (grouped, stratified, 20 %) from train.
    ``save=False`` (dry runs) computes the same assignment without writing a split file.
    """
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    if split_file is not None:
        assignment = _read_split_file(dataset, Path(split_file))
    elif dataset.has_official_splits:
        split = dataset.table["split"].astype(str).to_numpy(dtype=object)
        if not np.any(split == "val"):
            train = np.flatnonzero(split == "train")
            sub = grouped_stratified_split(stratification_labels(dataset)[train], dataset.groups[train],
                                           {"train": 0.8, "val": 0.2}, seed)
            split = split.copy()
            split[train] = sub
        assignment = SplitAssignment(split, "official", _sha(split, dataset))
    else:
        path = split_file_path(results_dir, dataset, seed, fractions)
        if path.is_file():
            assignment = _read_split_file(dataset, path)
        else:
            split = grouped_stratified_split(stratification_labels(dataset), dataset.groups, fractions, seed)
            if save:
                _write_split_file(dataset, split, path)
            assignment = SplitAssignment(split, f"file:{path}", _sha(split, dataset))
    check_splits(dataset, assignment.split)
    low_data = dataset.info.get("low_data")
    if low_data:
        split = low_data_subset(assignment.split, stratification_labels(dataset), dataset.groups, float(low_data["fraction"]),
                                int(low_data["seed"]))
        tag = f"low_data(fraction={low_data['fraction']:g},seed={low_data['seed']})"
        path = Path(results_dir) / "splits" / f"{dataset.name}__{dataset.manifest_hash()[:12]}__{tag}.csv"
        if save and not path.is_file():
            _write_split_file(dataset, split, path)
        assignment = SplitAssignment(split, f"{assignment.source}+{tag}", _sha(split, dataset))
        check_splits(dataset, split)
    return assignment


def low_data_subset(split: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float,
                    seed: int) -> np.ndarray:
    """Keep a seeded, class-stratified, grouped ``fraction`` of the train rows; the rest become ``"unused"``.

    Only train rows are touched (val and test stay whole). Each class keeps
    ``max(1, round(fraction * n_class))`` images (whole groups, drawn in a seeded order until
    the class's quota is reached), so the subset has about ``fraction`` of train and every class.

    Args:
        split: str [N]; labels: int [N]; groups: str [N]; fraction in (0, 1); seed: the recorded seed.
    Returns:
        str [N] split names with unselected train rows set to ``"unused"``.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"low-data fraction must be in (0, 1), got {fraction}")
    out = np.asarray(split, dtype=object).copy()
    train = np.flatnonzero(out == "train")
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"row": train, "label": labels[train], "group": np.asarray(groups)[train].astype(str)})
    group_label = frame.groupby("group", sort=True)["label"].agg(lambda s: s.value_counts().idxmax())
    keep: list[int] = []
    for label in sorted(frame["label"].unique()):
        members = frame[frame["group"].map(group_label) == label]
        quota = max(1, int(round(fraction * len(members))))
        rows_by_group = members.groupby("group", sort=True)["row"].apply(list).to_dict()
        group_ids = np.array(sorted(rows_by_group), dtype=object)
        taken = 0
        for group_id in group_ids[rng.permutation(len(group_ids))]:
            rows = rows_by_group[group_id]
            keep.extend(rows)
            taken += len(rows)
            if taken >= quota:
                break
    out[train] = "unused"
    out[np.array(keep, dtype=np.int64)] = "train"
    return out


def check_splits(dataset: ImageDataset, split: np.ndarray, required: tuple[str, ...] = SPLITS) -> None:
    """Raise :class:`DatasetError` for an empty split, a group in two splits, or a class absent from a split."""
    groups = dataset.groups
    frame = pd.DataFrame({"group": groups, "split": split})
    leaking = frame.groupby("group")["split"].nunique()
    if (leaking > 1).any():
        examples = leaking[leaking > 1].index[:5].tolist()
        raise DatasetError(f"dataset '{dataset.name}': groups {examples} appear in more than one split; "
                           f"splits must keep each patient/lesion in one split")
    for name in required:
        members = np.flatnonzero(split == name)
        if len(members) == 0:
            raise DatasetError(f"dataset '{dataset.name}': the '{name}' split is empty; "
                               f"give it images (split file or fractions) or use a larger dataset")
        if dataset.is_multilabel:
            _check_findings(dataset, members, name)
            continue
        present = set(np.unique(dataset.labels[members]).tolist())
        absent = [dataset.classes[c] for c in range(dataset.num_classes) if c not in present
                  and c in set(dataset.labels.tolist())]
        if absent:
            raise DatasetError(f"dataset '{dataset.name}': class(es) {absent} absent from the '{name}' split; "
                               f"metrics would be undefined. Use more data, other split fractions, or drop the class")


def _check_findings(dataset: ImageDataset, members: np.ndarray, name: str) -> None:
    """Multi-label: a finding with positives and negatives overall needs both in split ``name``."""
    matrix = dataset.label_matrix
    varies = (matrix.min(axis=0) == 0) & (matrix.max(axis=0) == 1)
    part = matrix[members]
    constant = varies & ((part.min(axis=0) == 1) | (part.max(axis=0) == 0))
    if constant.any():
        absent = [dataset.classes[k] for k in np.flatnonzero(constant)]
        raise DatasetError(f"dataset '{dataset.name}': finding(s) {absent} have only positive or only negative "
                           f"images in the '{name}' split; their AUC would be undefined. Use more data or other splits")


def _label_text(dataset: ImageDataset) -> list[str]:
    """The split file's ``label`` column: class names, or ``|``-joined positive findings (multi-label)."""
    if not dataset.is_multilabel:
        return [dataset.classes[c] for c in dataset.labels]
    return ["|".join(dataset.classes[k] for k in np.flatnonzero(row)) for row in dataset.label_matrix]


def _sha(split: np.ndarray, dataset: ImageDataset) -> str:
    text = "\n".join(f"{i},{s}" for i, s in zip(dataset.ids, split))
    return hashlib.sha256(text.encode()).hexdigest()


def _write_split_file(dataset: ImageDataset, split: np.ndarray, path: Path) -> None:
    frame = pd.DataFrame({"image_id": dataset.ids, "group": dataset.groups,
                          "label": _label_text(dataset), "split": split})
    atomic_write_text(path, frame.to_csv(index=False))
    log.info("wrote split file %s", path)


def _read_split_file(dataset: ImageDataset, path: Path) -> SplitAssignment:
    try:
        frame = pd.read_csv(path, dtype={"image_id": str})
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read split file {path}: {error}") from None
    if not {"image_id", "split"} <= set(frame.columns):
        raise DatasetError(f"split file {path} needs columns 'image_id' and 'split' (has {list(frame.columns)})")
    bad = sorted(set(frame["split"].astype(str)) - set(SPLITS))
    if bad:
        raise DatasetError(f"split file {path} has unknown split names {bad}; use train, val, test")
    mapping = dict(zip(frame["image_id"].astype(str), frame["split"].astype(str)))
    missing = [i for i in dataset.ids if i not in mapping]
    if missing:
        raise DatasetError(f"split file {path} does not cover {len(missing)} image(s) of '{dataset.name}', "
                           f"e.g. {missing[:3]}; regenerate it (delete the file) or add the rows")
    split = np.array([mapping[i] for i in dataset.ids], dtype=object)
    return SplitAssignment(split, f"file:{path}", _sha(split, dataset))
