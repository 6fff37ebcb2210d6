"""The label set, in one place.

Four classes the model predicts (``CLASS_NAMES``), plus ``TUMOR_UNKNOWN_TYPE``: a training-only label for slices
known to show a tumor of unrecorded type (e.g. the Br35H set). Every label is turned into a *target mask* over the
four classes: a one-hot vector for a known class, and ones on the three tumor classes for a tumor of unknown type.
The training loss is ``-log(sum(mask * probabilities))``, which is ordinary cross-entropy for a one-hot mask and
"is it any tumor" for the unknown-type mask, so both kinds of label train one softmax.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("glioma", "meningioma", "notumor", "pituitary")
NO_TUMOR = "notumor"
NO_TUMOR_INDEX = CLASS_NAMES.index(NO_TUMOR)
TUMOR_UNKNOWN_TYPE = "tumor"
TRAINING_LABELS: tuple[str, ...] = CLASS_NAMES + (TUMOR_UNKNOWN_TYPE,)


def target_mask(label: str) -> np.ndarray:
    """The four-class target mask of a training label; raises ValueError for a label outside the set."""
    if label == TUMOR_UNKNOWN_TYPE:
        mask = np.ones(len(CLASS_NAMES), dtype=np.float32)
        mask[NO_TUMOR_INDEX] = 0.0
        return mask
    if label not in CLASS_NAMES:
        raise ValueError(f"unknown label {label!r}: expected one of {', '.join(TRAINING_LABELS)}")
    mask = np.zeros(len(CLASS_NAMES), dtype=np.float32)
    mask[CLASS_NAMES.index(label)] = 1.0
    return mask


def is_tumor(label: str) -> bool:
    """True for every label except no tumor."""
    return label != NO_TUMOR
