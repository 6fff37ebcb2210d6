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

from infra import storage
from model.labels import CLASS_NAMES, NO_TUMOR_INDEX, TUMOR_UNKNOWN_TYPE
from model.metrics import classification_metrics

METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.png"


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


def confusion_matrix_png(metrics: dict, title: str) -> bytes:
    counts = np.array(metrics["confusion_matrix"]["counts"])
    figure = Figure(figsize=(5.5, 4.8), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.imshow(counts, cmap="Blues")
    axes.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=30)
    axes.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for (row, col), value in np.ndenumerate(counts):
        colour = "white" if value > counts.max() / 2 else "black"
        axes.text(col, row, str(value), ha="center", va="center", color=colour)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_evaluation(metrics: dict, output: str, title: str) -> None:
    storage.write_text(storage.join(output, METRICS_FILE), json.dumps(metrics, indent=2))
    storage.write_bytes(storage.join(output, CONFUSION_FILE), confusion_matrix_png(metrics, title))
