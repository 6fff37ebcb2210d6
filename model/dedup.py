"""Near-duplicate grouping and duplicate-aware splits of a labelled image set.

In: a tiny grey thumbnail per image. Out: a group id per image, where images whose mean-centred thumbnails have a
cosine similarity at or above a threshold share a group (transitively), and fold assignments that keep every
group on one side of every split. A random split of the brain-tumor set leaks near-identical slices into
validation; this is what prevents it.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

THUMBNAIL_SIDE = 32
DEFAULT_SIMILARITY = 0.99


def thumbnail(grey: np.ndarray) -> np.ndarray:
    """A ``THUMBNAIL_SIDE``² float32 vector: the image shrunk, mean-centred and scaled to unit length."""
    small = cv2.resize(grey.astype(np.float32), (THUMBNAIL_SIDE, THUMBNAIL_SIDE), interpolation=cv2.INTER_AREA)
    vector = small.ravel() - small.mean()
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def group_near_duplicates(thumbnails: np.ndarray, threshold: float = DEFAULT_SIMILARITY,
                          block: int = 2048) -> np.ndarray:
    """Group ids (0..n_groups-1, in order of first appearance) from an ``(n, d)`` array of unit thumbnails: the
    connected components of the graph linking every pair at or above ``threshold``."""
    count = len(thumbnails)
    vectors = thumbnails.astype(np.float32)
    rows, cols = [], []
    for start in range(0, count, block):
        pair_rows, pair_cols = np.nonzero(vectors[start:start + block] @ vectors.T >= threshold)
        rows.append(pair_rows + start)
        cols.append(pair_cols)
    links = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(links), np.int8), (links, np.concatenate(cols) if cols else links)),
                       shape=(count, count))
    _, components = connected_components(graph, directed=False)
    _, first = np.unique(components, return_index=True)
    order = np.empty(len(first), dtype=np.int64)
    order[np.argsort(first)] = np.arange(len(first))  # renumber by first appearance
    return order[components]


def grouped_folds(group_ids: np.ndarray, labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """A fold number per image: whole groups go to folds, largest first, each to the fold with fewest of its label."""
    if folds < 2:
        raise ValueError(f"need at least 2 folds, got {folds}")
    rng = np.random.default_rng(seed)
    label_values = sorted(set(labels.tolist()))
    counts = np.zeros((folds, len(label_values)))
    fold_of_group = {}
    unique_groups = rng.permutation(np.unique(group_ids))
    sizes = {group: int(np.sum(group_ids == group)) for group in unique_groups}
    for group in sorted(unique_groups, key=lambda g: -sizes[g]):
        members = labels[group_ids == group]
        # the group's most common label, a tie going to the label first in sorted order (a set's order would
        # depend on the process's string hashing, and so would the split)
        label_index = int(np.argmax([np.count_nonzero(members == value) for value in label_values]))
        fold = int(np.argmin(counts[:, label_index] + 1e-3 * counts.sum(axis=1)))
        fold_of_group[group] = fold
        counts[fold, label_index] += len(members)
    return np.array([fold_of_group[group] for group in group_ids])


def grouped_split(group_ids: np.ndarray, labels: np.ndarray, validation_fraction: float,
                  seed: int = 0) -> np.ndarray:
    """Boolean mask of validation images: the last fold of ``round(1 / validation_fraction)`` grouped folds."""
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation fraction must be between 0 and 1, got {validation_fraction}")
    folds = max(2, int(round(1 / validation_fraction)))
    return grouped_folds(group_ids, labels, folds, seed) == folds - 1
