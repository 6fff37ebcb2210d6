"""Evaluating a registered model on a labelled folder, end to end: metrics.json and confusion_matrix.png.

Steps, in order: load the model's metadata and verified weights (``model.registry``, ``model.predict``), read and
preprocess the labelled images with the model's own preprocessing (``model.data``), score them, and write the
metrics and the figure (``model.evaluate``).
"""

from __future__ import annotations

import numpy as np

from model import registry
from model.data import IMAGE, LABEL, TARGET, list_labelled_images, load_labelled_dataset
from model.evaluate import evaluate_predictions, write_evaluation
from model.predict import ProbabilityPredictor, load_classifier


def evaluate_model(data: str, model_uri: str, output: str, tumor_data: tuple[str, ...] = (),
                   threshold: float | None = None) -> dict:
    """Score a labelled folder with a registered model (its calibration applied; at its operating point unless
    ``threshold`` is given); write metrics.json, the confusion matrix and the ROC curves to ``output``."""
    info = registry.load_model_info(model_uri)
    threshold = info.threshold if threshold is None else threshold
    predictor = ProbabilityPredictor(load_classifier(info), temperature=info.temperature)
    dataset = load_labelled_dataset(list_labelled_images(data, tumor_data), info.preprocessing)
    probabilities, targets, labels = [], [], []
    for batch in dataset.iter_batches(batch_size=256, batch_format="numpy"):
        probabilities.append(predictor(batch[IMAGE]))
        targets.append(batch[TARGET])
        labels.append(batch[LABEL].astype(str))
    probabilities, targets = np.concatenate(probabilities), np.concatenate(targets)
    metrics = evaluate_predictions(probabilities, targets, np.concatenate(labels), threshold)
    metrics["model_version"], metrics["model_sha256"], metrics["data"] = info.version, info.weights_sha256, data
    write_evaluation(metrics, output, f"{info.version} on {data.rstrip('/').split('/')[-1]}", probabilities, targets)
    return metrics
