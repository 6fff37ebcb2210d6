"""Evaluation of predictions on labelled images: metrics.json and a confusion-matrix PNG.

In: predicted probabilities, target masks, and the labels they came from. Out: the metrics of
``model.metrics.classification_metrics`` plus the sensitivity on tumors of unknown type (images from other
sources, e.g. Br35H), written to an output folder (local or S3). Figures are drawn on a private Agg canvas, so
importing this module changes no global plotting state.
"""

from __future__ import annotations

import io
import json

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import auc, roc_curve

from infra import storage
from model.labels import CLASS_NAMES, NO_TUMOR_INDEX, TUMOR_UNKNOWN_TYPE
from model.metrics import classification_metrics, roc_auc

METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.png"
ROC_FILE = "roc_curves.png"
RELIABILITY_FILE = "reliability.png"
CURVES_FILE = "training_curves.png"


def evaluate_predictions(probabilities: np.ndarray, targets: np.ndarray, labels: np.ndarray,
                         threshold: float = 0.5) -> dict:
    """All metrics, plus tumor sensitivity on the unknown-type tumor images when there are any."""
    metrics = classification_metrics(probabilities, targets, threshold)
    unknown = labels == TUMOR_UNKNOWN_TYPE
    if unknown.any():
        flagged = 1.0 - probabilities[unknown, NO_TUMOR_INDEX] >= threshold
        metrics["unknown_type_tumor_sensitivity"] = {"images": int(unknown.sum()),
                                                     "sensitivity": float(flagged.mean())}
    return metrics


def screening_figures(probabilities: np.ndarray, unfamiliar: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """What a night would show for one group of labelled images: the share of tumors flagged (sensitivity), of
    tumor-free images not flagged (specificity), of images marked unfamiliar (no class, no flag), and each class's
    recall among the images given a class. An unfamiliar image is not flagged, as in the screening job.

    ``roc_auc`` is the area under the ROC curve of the tumor probability, tumors against tumor-free images: how well
    the model ranks them whatever the threshold (the steadiest figure between runs, whose thresholds move with their
    validation); it reads the probability of every image, unfamiliar ones included."""
    tumor_probability = 1.0 - probabilities[:, NO_TUMOR_INDEX]
    flagged = ~unfamiliar & (tumor_probability >= threshold)
    tumor, no_tumor = labels != CLASS_NAMES[NO_TUMOR_INDEX], labels == CLASS_NAMES[NO_TUMOR_INDEX]
    predicted = np.array(CLASS_NAMES)[probabilities.argmax(axis=1)]
    ranking = roc_auc(tumor_probability, tumor)  # None unless both kinds of image are present
    recall = {name: round(float(np.mean(predicted[(labels == name) & ~unfamiliar] == name)), 4)
              for name in CLASS_NAMES if ((labels == name) & ~unfamiliar).any()}
    return {"images": int(len(labels)), "tumor_images": int(tumor.sum()), "no_tumor_images": int(no_tumor.sum()),
            "sensitivity": round(float(flagged[tumor].mean()), 4) if tumor.any() else None,
            "specificity": round(float(1.0 - flagged[no_tumor].mean()), 4) if no_tumor.any() else None,
            "marked_unfamiliar": round(float(unfamiliar.mean()), 4) if len(labels) else None,
            "roc_auc": None if ranking is None else round(ranking, 4),
            "class_recall": recall}


def figures_by_group(probabilities: np.ndarray, unfamiliar: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                     threshold: float) -> dict:
    """``screening_figures`` for each group (for example each sequence folder of another hospital's slices)."""
    return {str(group): screening_figures(probabilities[groups == group], unfamiliar[groups == group],
                                          labels[groups == group], threshold) for group in sorted(set(groups))}


def new_figure(width: float, height: float, columns: int = 1) -> tuple[Figure, object]:
    """A figure on its own Agg canvas and its axes (an array of ``columns`` axes when more than one)."""
    figure = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, columns)


def png_bytes(figure: Figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def confusion_matrix_png(metrics: dict, title: str) -> bytes:
    counts = np.array(metrics["confusion_matrix"]["counts"])
    figure, axes = new_figure(5.5, 4.8)
    axes.imshow(counts, cmap="Blues")
    axes.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=30)
    axes.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for (row, col), value in np.ndenumerate(counts):
        colour = "white" if value > counts.max() / 2 else "black"
        axes.text(col, row, str(value), ha="center", va="center", color=colour)
    return png_bytes(figure)


def roc_curves_png(probabilities: np.ndarray, targets: np.ndarray, title: str, threshold: float) -> bytes:
    """One-vs-rest ROC of each class (known-class images) and tumor vs no tumor (all), the operating point marked."""
    figure, axes = new_figure(5.5, 5.0)
    known = np.isclose(targets.sum(axis=1), 1.0)
    for index, name in enumerate(CLASS_NAMES):
        positives = targets[known, index] > 0.5
        if positives.any() and (~positives).any():
            false_positive, true_positive, _ = roc_curve(positives, probabilities[known, index])
            axes.plot(false_positive, true_positive, label=f"{name} (AUC {auc(false_positive, true_positive):.3f})")
    is_tumor = targets[:, NO_TUMOR_INDEX] < 0.5
    tumor_probability = 1.0 - probabilities[:, NO_TUMOR_INDEX]
    if is_tumor.any() and (~is_tumor).any():
        false_positive, true_positive, _ = roc_curve(is_tumor, tumor_probability)
        area = auc(false_positive, true_positive)
        axes.plot(false_positive, true_positive, "k--", label=f"tumor vs none (AUC {area:.3f})")
        flagged = tumor_probability >= threshold
        axes.plot([flagged[~is_tumor].mean()], [flagged[is_tumor].mean()], "ko",
                  label=f"operating point (threshold {threshold:.3f})")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize=8)
    return png_bytes(figure)


def reliability_png(before: np.ndarray, after: np.ndarray, targets: np.ndarray, title: str, bins: int = 10) -> bytes:
    """Accuracy against confidence of the predicted class, before and after calibration (known-class images)."""
    figure, axes = new_figure(5.0, 5.0)
    known = np.isclose(targets.sum(axis=1), 1.0)
    true_classes = targets[known].argmax(axis=1)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    edges = np.linspace(0, 1, bins + 1)
    for probabilities, label in ((before, "before calibration"), (after, "after calibration")):
        confidence = probabilities[known].max(axis=1)
        correct = probabilities[known].argmax(axis=1) == true_classes
        which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
        used = [b for b in range(bins) if (which == b).any()]
        axes.plot([confidence[which == b].mean() for b in used], [correct[which == b].mean() for b in used],
                  marker="o", label=label)
    axes.set_xlabel("confidence of the predicted class")
    axes.set_ylabel("accuracy")
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize=8)
    return png_bytes(figure)


def training_curves_png(history: list[dict], title: str) -> bytes:
    """Training and validation loss, and validation accuracy and macro-F1, epoch by epoch."""
    figure, (losses, scores) = new_figure(9.0, 3.8, columns=2)
    epochs = [entry["epoch"] for entry in history]
    losses.plot(epochs, [entry["train_loss"] for entry in history], label="training loss (smoothed labels)")
    losses.plot(epochs, [entry["val_loss"] for entry in history], label="validation loss")
    scores.plot(epochs, [entry["val_accuracy"] for entry in history], label="validation accuracy")
    scores.plot(epochs, [entry["val_macro_f1"] for entry in history], label="validation macro-F1")
    for axes, name in ((losses, "loss"), (scores, "score")):
        axes.set_xlabel("epoch")
        axes.set_ylabel(name)
        axes.legend(fontsize=8)
    figure.suptitle(title)
    return png_bytes(figure)


def write_evaluation(metrics: dict, output: str, title: str, probabilities: np.ndarray | None = None,
                     targets: np.ndarray | None = None) -> None:
    """metrics.json and the confusion matrix; with the probabilities and targets, the ROC curves too."""
    storage.write_text(storage.join(output, METRICS_FILE), json.dumps(metrics, indent=2))
    storage.write_bytes(storage.join(output, CONFUSION_FILE), confusion_matrix_png(metrics, title))
    if probabilities is not None and targets is not None:
        threshold = metrics["tumor_vs_no_tumor"]["threshold"]
        storage.write_bytes(storage.join(output, ROC_FILE), roc_curves_png(probabilities, targets, title, threshold))
