"""Calibrated probabilities and the flag threshold: fitted on validation, stored with the model, used by scoring.

Temperature scaling divides the log-probabilities by one scalar ``T`` fitted to minimise the masked negative
log-likelihood on the validation set (the training loss, so tumors of unknown type count as "any tumor"); it
changes confidence, never the ranking or the predicted class. The operating point is the highest threshold on the
calibrated tumor probability (1 - p(no tumor)) at which at least ``target_sensitivity`` of the validation tumors
are flagged: of all of them together, and of each group of tumors (typed tumors; tumors of unknown type from another
source) large enough to set a threshold of its own, and never above ``MAX_THRESHOLD``: a screening threshold is
lowered to find tumors, never raised to buy specificity.

A group is large enough when the target lets it miss at least ``MIN_GROUP_MISSES`` tumors (250 tumors at 0.98).
A smaller group's threshold would be one or two slices' scores: with the 75 Br35H slices of the shipped split, the
second-lowest of them set the threshold of each candidate trained from scratch so far: on the site HT left out of
training, a specificity of 0.481 against 0.642 with the pool (``docs/model.md``). Such a group counts in the pool.
Both live in ``model.json`` (``calibration``, ``operating_point``) and ``ModelInfo`` exposes them.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from model.labels import NO_TUMOR_INDEX

TARGET_SENSITIVITY = 0.98
MAX_THRESHOLD = 0.5
MARGIN = 1e-6
MIN_GROUP_MISSES = 5


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` row by row; ``T = 1`` returns the probabilities unchanged."""
    if temperature == 1.0 or len(probabilities) == 0:
        return probabilities
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return (scaled / scaled.sum(axis=1, keepdims=True)).astype(probabilities.dtype)


def masked_nll(probabilities: np.ndarray, targets: np.ndarray) -> float:
    covered = np.clip((probabilities * targets).sum(axis=1), 1e-12, 1.0)
    return float(-np.log(covered).mean())


def fit_temperature(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises the masked NLL of the calibrated probabilities."""
    result = minimize_scalar(lambda t: masked_nll(apply_temperature(probabilities, t), targets),
                             bounds=(0.05, 20.0), method="bounded", options={"xatol": 1e-4})
    return float(result.x)


def sensitivity_threshold(tumor_scores: np.ndarray, target_sensitivity: float) -> float:
    """The highest threshold flagging at least ``target_sensitivity`` of ``tumor_scores`` (less ``MARGIN``, so
    float32 scoring cannot lose the boundary tumor to rounding)."""
    ordered = np.sort(tumor_scores)
    may_miss = int(np.floor((1.0 - target_sensitivity) * len(ordered) + 1e-9))
    return max(0.0, float(ordered[may_miss]) - MARGIN)


def operating_threshold(probabilities: np.ndarray, targets: np.ndarray,
                        target_sensitivity: float = TARGET_SENSITIVITY) -> float:
    """The flag threshold: see the module docstring."""
    tumor_score = 1.0 - probabilities[:, NO_TUMOR_INDEX]
    is_tumor = targets[:, NO_TUMOR_INDEX] < 0.5
    typed = is_tumor & np.isclose(targets.sum(axis=1), 1.0)
    if not is_tumor.any():
        raise ValueError("no tumor images to choose an operating point on")
    smallest = min_group_tumors(target_sensitivity)
    groups = [is_tumor] + [group for group in (typed, is_tumor & ~typed) if group.sum() >= smallest]
    return min([MAX_THRESHOLD] + [sensitivity_threshold(tumor_score[group], target_sensitivity) for group in groups])


def min_group_tumors(target_sensitivity: float) -> int:
    """The fewest tumors a group needs to set a threshold of its own: enough that the target lets it miss
    ``MIN_GROUP_MISSES`` of them."""
    return int(np.ceil(MIN_GROUP_MISSES / max(1.0 - target_sensitivity, 1e-9) - 1e-9))
