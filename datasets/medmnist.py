"""MedMNIST v2 / MedMNIST+ 2D datasets from their ``.npz`` files: ``medmnist:<flag>``.

Layout (``--root DIR``, default ``$MEDTRANSFER_DATA/medmnist``, where ``cli.py data download
medmnist:<flag>`` puts them)::

    DIR/dermamnist.npz          28 px (MedMNIST v2)
    DIR/dermamnist_64.npz       64 / 128 / 224 px (MedMNIST+); choose with --dataset-option size=64

``--root`` may also be the ``.npz`` file itself. Keys ``{train,val,test}_images`` (uint8
[N, H, W] or [N, H, W, 3]) and ``{train,val,test}_labels`` ([N, 1] as published, or [N]; both are
accepted; [N, 14] for ChestMNIST). The official train/val/test splits are used; each image is its
own group (MedMNIST gives no patient ids). The file's md5 is compared with the published one
(:mod:`datasets.medmnist_info`); a mismatch is logged and kept in ``dataset.info["md5"]``, never
hidden and never fatal (re-saved copies differ legitimately).

Multi-label ChestMNIST: the default task ``multilabel`` builds a multi-label dataset (the contract
of :mod:`datasets.base`): ``label_matrix`` uint8 [N, 14], ``is_multilabel`` True (also
``info["multilabel"] = True``); evaluators that support it (knn, linear, finetune, medmnist-v2)
train one-vs-rest per finding and report AUC = mean over the 14 findings and ACC = mean label
accuracy at 0.5, as MedMNIST's evaluator; the others refuse it with a one-line message.
``--dataset-option task=<finding>`` (e.g. ``task=effusion``) gives a binary one-vs-rest task that
every evaluator can use.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.atomic import atomic_write_text
from benchmark.features import default_cache_dir
from datasets.base import SPLITS, ArrayImageDataset, DatasetError, DatasetSpec
from datasets.common import built_name, check_options, default_data_dir, low_data_settings, primary_metric_for
from datasets.download import md5_of
from datasets.medmnist_info import MEDMNIST_2D, SIZES, file_name
from datasets.registry import DATASETS

log = logging.getLogger(__name__)

PREFIX = "medmnist:"


class MedMNISTDataset(ArrayImageDataset):
    """Array dataset fingerprinted by its file's md5 (cheap for large files); the labels (or the
    multi-label matrix) enter the manifest hash through :class:`ImageDataset`."""

    def _fingerprint_rows(self, strict: bool):
        yield str(self.info["md5"]["actual"]).encode()


def locate_file(root: Path | None, flag: str, size: int) -> Path:
    """The ``.npz`` for ``flag`` at ``size`` under ``root`` (or ``root`` itself when it is a file)."""
    if root is not None and Path(root).is_file():
        return Path(root)
    folder = Path(root).expanduser() if root is not None else default_data_dir() / "medmnist"
    names = [file_name(flag, size)] + ([f"{flag}_28.npz"] if size == 28 else [])
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(f"dataset '{PREFIX}{flag}': {folder / names[0]} not found. Download it with "
                       f"`python cli.py data download {PREFIX}{flag}{'' if size == 28 else f' --size {size}'}` "
                       f"(or pass --root to the folder or file)")


def file_md5(path: Path) -> str:
    """md5 of ``path``, cached under the cache dir by (path, size, mtime) so large files hash once."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    cache = default_cache_dir() / "md5" / f"{key}.json"
    try:
        return json.loads(cache.read_text())["md5"]
    except (OSError, ValueError, KeyError):
        pass
    digest = md5_of(path)
    try:
        atomic_write_text(cache, json.dumps({"path": str(path), "md5": digest}))  # a kill never leaves half a memo
    except OSError:
        log.debug("cannot cache md5 of %s", path)
    return digest


def md5_status(path: Path, flag: str, size: int) -> dict:
    expected = MEDMNIST_2D[flag]["md5"].get(size)
    actual = file_md5(path)
    status = "unknown" if expected is None else ("ok" if actual == expected else "mismatch")
    if status == "mismatch":
        log.warning("medmnist:%s: %s has md5 %s but the published md5 of %s is %s; the file is not the published "
                    "release (re-saved or changed). Results may not be comparable.", flag, path, actual,
                    file_name(flag, size), expected)
    return {"expected": expected, "actual": actual, "status": status, "file": str(path)}


def read_npz(path: Path, name: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as error:
        raise DatasetError(f"dataset '{name}': cannot read {path}: {error}. The file is truncated or not an npz; "
                           f"download it again") from None
    missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in arrays]
    if missing:
        raise DatasetError(f"dataset '{name}': {path.name} lacks arrays {missing}; it has {sorted(arrays)}")
    return arrays


def _labels_of(array: np.ndarray, n_labels: int, multilabel: bool, path: Path, key: str, name: str) -> np.ndarray:
    """[N, 1] or [N] -> int [N]; [N, L] kept for multi-label sets."""
    if multilabel:
        if array.ndim != 2 or array.shape[1] != n_labels:
            raise DatasetError(f"dataset '{name}': {path.name} {key} has shape {array.shape}, expected (N, {n_labels})")
        return array.astype(np.uint8)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise DatasetError(f"dataset '{name}': {path.name} {key} has shape {array.shape}; expected (N, 1) or (N,)")
    labels = array.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_labels):
        raise DatasetError(f"dataset '{name}': {path.name} {key} has labels outside 0..{n_labels - 1}")
    return labels


def build_medmnist(flag: str, root: Path | None, options: dict) -> ArrayImageDataset:
    name = PREFIX + flag
    facts = MEDMNIST_2D[flag]
    multilabel_source = facts["task"].startswith("multi-label")
    check_options(name, options, ("size",))
    try:
        size = int(options.get("size", 28))
    except (TypeError, ValueError):
        size = -1
    if size not in SIZES:
        raise DatasetError(f"dataset '{name}': size must be one of {SIZES}, got '{options.get('size')}'")
    findings = facts["labels"]
    tasks = ["multilabel"] + findings if multilabel_source else ["multi-class" if len(findings) > 2 else "binary"]
    task = str(options.get("task", tasks[0])).lower()
    if task not in tasks:
        raise DatasetError(f"dataset '{name}' has no task '{task}'; tasks: {tasks}")
    path = locate_file(root, flag, size)
    arrays = read_npz(path, name)
    images, labels, split = [], [], []
    for split_name in SPLITS:
        split_images = arrays[f"{split_name}_images"]
        split_labels = _labels_of(arrays[f"{split_name}_labels"], len(findings), multilabel_source, path,
                                  f"{split_name}_labels", name)
        if len(split_images) != len(split_labels):
            raise DatasetError(f"dataset '{name}': {path.name} has {len(split_images)} {split_name} images but "
                               f"{len(split_labels)} labels")
        images.append(split_images)
        labels.append(split_labels)
        split += [split_name] * len(split_images)
    images_all = np.concatenate(images)
    if images_all.dtype != np.uint8 or images_all.ndim not in (3, 4):
        raise DatasetError(f"dataset '{name}': images must be uint8 [N, H, W(, 3)], got {images_all.dtype} "
                           f"{images_all.shape}")
    label_all = np.concatenate(labels)
    ids = [f"{s}/{i}" for s, n in zip(SPLITS, map(len, images)) for i in range(n)]
    table = pd.DataFrame({"image_id": ids, "group": ids, "split": split})
    info = {"md5": md5_status(path, flag, size), "size": size, "flag": flag, "medmnist_task": facts["task"],
            "n_samples": {s: int(len(a)) for s, a in zip(SPLITS, images)}, "licence": facts["license"]}
    published = facts["n_samples"]
    if info["n_samples"] != published:
        log.warning("%s: split sizes %s differ from the published %s", name, info["n_samples"], published)
    low_data = low_data_settings(name, options)
    if low_data:
        info["low_data"] = low_data
    built = built_name(name, task, tasks[0], [str(size)] if size != 28 else [], low_data, options)
    if task == "multilabel":
        info["label_matrix"] = "dataset.label_matrix: uint8 [N, 14], one column per finding in dataset.classes"
        return MedMNISTDataset(built, table, list(findings), images_all, task="14 findings, multi-label",
                               info={**info, "primary_metric": "auroc", "multilabel": True}, label_matrix=label_all)
    if multilabel_source:
        table["label"] = label_all[:, findings.index(task)].astype(np.int64)
        classes, description = [f"no {task}", task], f"binary: {task} vs not (one finding of ChestMNIST)"
    else:
        table["label"] = label_all
        classes, description = list(findings), f"{facts['task']}, {len(findings)} classes"
    info["primary_metric"] = primary_metric_for(len(classes))
    return MedMNISTDataset(built, table, classes, images_all, task=description, info=info)


def _register(flag: str) -> None:
    facts = MEDMNIST_2D[flag]
    n_labels = len(facts["labels"])
    tasks = ("multilabel", "<finding>") if facts["task"].startswith("multi-label") else (
        "multi-class" if n_labels > 2 else "binary",)
    DATASETS.add(PREFIX + flag, DatasetSpec(
        name=PREFIX + flag, build=lambda root, options: build_medmnist(flag, root, options), tasks=tasks,
        description=f"MedMNIST {flag}: {len(facts['labels'])} {'findings' if len(tasks) > 1 else 'classes'}, "
                    f"{facts['n_channels']}-channel, sizes 28/64/128/224 (--dataset-option size=)",
        files_present=lambda root: _present(root, flag),
        source=f"https://medmnist.com (Zenodo record 10519652); `python cli.py data download {PREFIX}{flag}`",
        licence=facts["license"], extra={"folder": "medmnist", "flag": flag}))


def _present(root: Path | None, flag: str) -> bool:
    try:
        locate_file(root, flag, 28)
    except DatasetError:
        return False
    return True


for _flag in MEDMNIST_2D:
    _register(_flag)
