"""Multi-view invariance on natural pairs: two different images of the same group (lesion or patient).

ANTON ``invariances_multiview.py`` scores CheXpert frontal/lateral and EyePACS left/right pairs with
the invariance metric, once per pair. Here any dataset whose ``group`` column has groups with two or
more images works (synthderm lesions, HAM10000 ``lesion_id``, a patient id). One pair per group
(seeded choice of two images), optionally only pairs with the same label; as a reference, the same
number of random pairs of images from *different* groups is scored too, so the multi-view
similarity can be read against the similarity of unrelated images.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from datasets.base import DatasetError


def same_group_pairs(groups: np.ndarray, labels: np.ndarray, rows: np.ndarray, seed: int, max_pairs: int | None,
                     same_label_only: bool = True) -> np.ndarray:
    """One pair of dataset rows per group with >= 2 images among ``rows``.

    Args:
        groups, labels: per dataset row; rows: candidate dataset rows.
        max_pairs: keep at most this many pairs (groups sampled without replacement, seeded).
    Returns:
        int [P, 2] dataset rows, sorted by the first row.
    """
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"row": rows, "group": groups[rows].astype(str), "label": labels[rows]})
    pairs = []
    for _, members in frame.groupby("group", sort=True):
        if same_label_only:
            counts = members["label"].value_counts()
            members = members[members["label"] == counts.idxmax()]
        if len(members) < 2:
            continue
        chosen = rng.choice(members["row"].to_numpy(), size=2, replace=False)
        pairs.append(sorted(int(r) for r in chosen))
    if not pairs:
        raise DatasetError("multi-view invariance needs groups (lesion or patient ids) with at least two images"
                           + (" of the same label" if same_label_only else "") + "; this dataset has none in the "
                           "chosen split. Use a dataset with several images per lesion/patient or split=all.")
    pairs = np.array(pairs, dtype=np.int64)
    if max_pairs is not None and len(pairs) > max_pairs:
        pairs = pairs[np.sort(rng.choice(len(pairs), size=max_pairs, replace=False))]
    return pairs[np.argsort(pairs[:, 0], kind="stable")]


def different_group_pairs(groups: np.ndarray, rows: np.ndarray, n_pairs: int, seed: int) -> np.ndarray:
    """``n_pairs`` random pairs of ``rows`` from different groups (seeded), int [n_pairs, 2]."""
    rng = np.random.default_rng(seed + 1)
    rows = np.asarray(rows)
    if len(np.unique(groups[rows])) < 2:
        raise DatasetError("need at least two groups for the different-group reference pairs")
    pairs = []
    while len(pairs) < n_pairs:
        a, b = rng.choice(rows, size=2, replace=False)
        if groups[a] != groups[b]:
            pairs.append((int(a), int(b)))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)
