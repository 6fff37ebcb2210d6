"""Classification metrics from predicted probabilities and target masks (scikit-learn's, plus calibration error).

In: ``probabilities`` ``(n, 4)`` and ``targets`` ``(n, 4)`` masks from ``model.labels.target_mask``. Rows whose
mask is one-hot have a known class and count in the four-class metrics; every row counts in tumor-vs-no-tumor
metrics (an unknown-type tumor mask is a tumor). Out: a JSON-ready dict.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

from model.labels import CLASS_NAMES, NO_TUMOR_INDEX


def known_class_rows(targets: np.ndarray) -> np.ndarray:
    return np.isclose(targets.sum(axis=1), 1.0)


CLASS_INDICES = list(range(len(CLASS_NAMES)))


def class_confusion(true_classes: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Counts by (true, predicted) class; all zero without known-class rows (scikit-learn refuses empty input)."""
    if len(true_classes) == 0:
        return np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), dtype=np.int64)
    return confusion_matrix(true_classes, predicted, labels=CLASS_INDICES)


def per_class_scores(true_classes: np.ndarray, predicted: np.ndarray) -> dict[str, dict[str, float]]:
    if len(true_classes) == 0:
        return {name: {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0} for name in CLASS_NAMES}
    precision, recall, f1, support = precision_recall_fscore_support(
        true_classes, predicted, labels=CLASS_INDICES, zero_division=0)
    return {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])} for i, name in enumerate(CLASS_NAMES)}


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Area under the ROC curve; None when one side is empty."""
    if positives.all() or not positives.any():
        return None
    return float(roc_auc_score(positives, scores))


def expected_calibration_error(probabilities: np.ndarray, true_classes: np.ndarray, bins: int = 15) -> float:
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == true_classes
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)


def tumor_metrics(probabilities: np.ndarray, targets: np.ndarray, threshold: float) -> dict:
    tumor_probability = 1.0 - probabilities[:, NO_TUMOR_INDEX]
    is_tumor = targets[:, NO_TUMOR_INDEX] < 0.5
    flagged = tumor_probability >= threshold
    return {
        "threshold": threshold,
        "tumor_images": int(is_tumor.sum()),
        "no_tumor_images": int((~is_tumor).sum()),
        "sensitivity": float(flagged[is_tumor].mean()) if is_tumor.any() else None,
        "specificity": float((~flagged[~is_tumor]).mean()) if (~is_tumor).any() else None,
        "roc_auc": roc_auc(tumor_probability, is_tumor),
    }


def classification_metrics(probabilities: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy, macro-F1, per-class scores, ROC AUC, ECE on known-class rows; tumor metrics on all rows."""
    known = known_class_rows(targets)
    true_classes = targets[known].argmax(axis=1)
    known_probabilities = probabilities[known]
    predicted = known_probabilities.argmax(axis=1)
    matrix = class_confusion(true_classes, predicted)
    per_class = per_class_scores(true_classes, predicted)
    aucs = {name: roc_auc(known_probabilities[:, index], true_classes == index)
            for index, name in enumerate(CLASS_NAMES)}
    defined_aucs = [value for value in aucs.values() if value is not None]
    return {
        "images": int(len(targets)),
        "known_class_images": int(known.sum()),
        "accuracy": float((predicted == true_classes).mean()) if known.any() else None,
        "macro_f1": float(np.mean([scores["f1"] for scores in per_class.values()])),
        "per_class": per_class,
        "roc_auc_one_vs_rest": aucs,
        "roc_auc_macro": float(np.mean(defined_aucs)) if defined_aucs else None,
        "expected_calibration_error": expected_calibration_error(known_probabilities, true_classes)
        if known.any() else None,
        "tumor_vs_no_tumor": tumor_metrics(probabilities, targets, threshold),
        "confusion_matrix": {"classes": list(CLASS_NAMES), "counts": matrix.tolist()},
    }
