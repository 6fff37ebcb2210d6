"""Cross-validating the training recipe: the labelled images in, each validation metric's mean and spread over K
duplicate-aware folds out.

1. List and preprocess the labelled images, as retraining does (``pipeline.retrain``, ``model.data``).
2. Group near-duplicates (``model.dedup``) and deal whole groups to K folds, balanced by label
   (``model.dedup.grouped_folds``), so no fold validates on a near-copy of a training image.
3. For each fold: train on the other folds with the run's recipe (``model.train``), calibrate on the held-out fold
   and evaluate it at its own operating point, as a candidate is judged (``pipeline.retrain.calibrated_evaluation``).
4. Report every fold's figures and, per figure, the mean and standard deviation, written as JSON to
   ``<output>/cross_validation/<stamp>.json``. No model is kept and the registry is not touched: this measures the
   recipe, it does not make a candidate.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging

import numpy as np
import pandas as pd
import ray

from infra import storage
from model.architecture import build_classifier
from model.config import RetrainConfig
from model.data import LABEL, URI, LabelledImage, list_labelled_images, load_labelled_dataset
from model.dedup import grouped_folds
from model.predict import ProbabilityPredictor
from model.train import BEST_WEIGHTS, train_classifier
from pipeline.retrain import calibrated_evaluation, near_duplicate_groups, split_by_uris, validation_arrays

logger = logging.getLogger(__name__)

# the figures summarised across folds: name -> how to read it from a fold's metrics
FIGURES = {
    "accuracy": lambda m: m["accuracy"],
    "macro_f1": lambda m: m["macro_f1"],
    **{f"recall_{name}": (lambda m, name=name: m["per_class"][name]["recall"])
       for name in ("glioma", "meningioma", "notumor", "pituitary")},
    "tumor_sensitivity": lambda m: m["tumor_vs_no_tumor"]["sensitivity"],
    "tumor_specificity": lambda m: m["tumor_vs_no_tumor"]["specificity"],
    "expected_calibration_error": lambda m: m["expected_calibration_error"],
}


def fold_of_each_image(dataset: ray.data.Dataset, config: RetrainConfig, folds: int) -> pd.DataFrame:
    """URI -> fold for every image, whole near-duplicate groups together (sorted, so only the data and the seed
    decide)."""
    table, groups = near_duplicate_groups(dataset, config)
    table["fold"] = grouped_folds(groups, table[LABEL].to_numpy().astype(str), folds, config.split_seed)
    return table[[URI, LABEL, "fold"]]


def train_fold(config: RetrainConfig, dataset: ray.data.Dataset, held_out: set, fold: int, stamp: str) -> dict:
    """Train on every image outside ``held_out``; the held-out fold's calibrated figures."""
    train, validation = split_by_uris(dataset, held_out, keep_maps=bool(config.training.tumor_map_weight))
    training = dataclasses.replace(config.training, run_name=f"crossval-{stamp}-fold{fold}")
    network = config.architecture.member()  # the recipe of one network: an ensemble's members are trained alike
    weights_dir, state = train_classifier(train, validation, network, config.preprocessing.image_size, training)
    model = build_classifier(network, config.preprocessing.image_size)
    model.load_weights(str(weights_dir / BEST_WEIGHTS))
    images, targets, labels = validation_arrays(validation)
    metrics, records, _ = calibrated_evaluation(ProbabilityPredictor(model)(images), targets, labels)
    figures = {name: read(metrics) for name, read in FIGURES.items()}
    logger.info("fold %d: %d validation images, accuracy %.4f, macro-F1 %.4f, best epoch %d", fold, len(images),
                figures["accuracy"], figures["macro_f1"], state["best_epoch"])
    return {"fold": fold, "validation_images": int(len(images)), "best_epoch": state["best_epoch"],
            "threshold": records["operating_point"]["threshold"], **figures}


def summarize(results: list[dict]) -> dict:
    """Per figure: mean, standard deviation (n - 1) and range over the folds."""
    summary = {}
    for name in FIGURES:
        values = np.array([result[name] for result in results if result[name] is not None], dtype=float)
        summary[name] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                         "min": float(values.min()), "max": float(values.max())}
    return summary


def cross_validate(config: RetrainConfig, folds: int, images: list[LabelledImage] | None = None) -> dict:
    """Stages 1-4; returns the report that is also written under ``<output>/cross_validation/``."""
    stamp = f"{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}"
    images = images if images is not None else list_labelled_images(config.data, config.tumor_data)
    dataset = load_labelled_dataset(images, config.preprocessing, cache=config.cache).materialize()
    assignment = fold_of_each_image(dataset, config, folds)
    results = [train_fold(config, dataset, set(assignment[URI][assignment["fold"] == fold]), fold, stamp)
               for fold in range(folds)]
    report = {"folds": folds, "images": int(len(assignment)), "epochs": config.training.epochs,
              "training": dataclasses.asdict(config.training), "architecture": config.architecture.to_dict(),
              "per_fold": results, "summary": summarize(results)}
    uri = storage.join(config.output, "cross_validation", f"{stamp}.json")
    storage.write_text(uri, json.dumps(report, indent=2))
    report["uri"] = uri
    return report
