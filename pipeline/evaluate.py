"""Evaluating a registered model on a labelled folder, end to end: metrics.json, the confusion matrix, ROC curves.

1. Load the model's metadata and verified weights (``model.registry``, ``model.predict``).
2. Read and preprocess the labelled images with the model's own preprocessing (``model.data``).
3. Check them against the data the model was trained and validated on (its ``model.json`` records where): images
   that are near-duplicates of it (``model.dedup``, the threshold the split used) are counted, logged as a warning,
   and the metrics are reported on all images and on the unseen ones. When that data cannot be read, the metrics
   say the overlap was not checked.
4. Score through the backend ``jobs.screen`` runs (``model.backends``; default ``auto``, on this CPU), so the figures
   are the ones a hospital gets; the metrics name the backend that ran, and count the images its unfamiliarity
   check marks (the screening job gives those no class and no flag).
5. Report what a night would show, for all images and for each sub-folder below the class folders (``by_folder``:
   sensitivity, specificity, unfamiliar share, class recall; another hospital's slices in ``glioma/flair``,
   ``notumor/flair``... are judged per sequence). A folder may hold only some of the classes.
6. Write the metrics and the figures (``model.evaluate``).
"""

from __future__ import annotations

import logging

import numpy as np

from infra import storage
from model import registry
from model.data import (IMAGE, LABEL, TARGET, THUMBNAIL, URI, DatasetError, list_labelled_images,
                        load_labelled_dataset, subfolders)
from model.dedup import DEFAULT_SIMILARITY
from model.evaluate import evaluate_predictions, figures_by_group, write_evaluation
from model.backends import auto_backend, make_predictor

logger = logging.getLogger(__name__)


def evaluate_model(data: str, model_uri: str, output: str, tumor_data: tuple[str, ...] = (),
                   threshold: float | None = None, cache: str | None = None, backend: str = "auto") -> dict:
    """Score a labelled folder with a registered model (its calibration applied; at its operating point unless
    ``threshold`` is given) on ``backend``; write metrics.json, the confusion matrix and the ROC curves to
    ``output``."""
    info = registry.load_model_info(model_uri)
    threshold = info.threshold if threshold is None else threshold
    asked = auto_backend(info, use_gpu=False) if backend == "auto" else backend
    predictor, detector, ran = make_predictor(info, asked)
    listed = list_labelled_images(data, tumor_data, every_class=False)
    images, targets, labels, thumbnails, uris = labelled_arrays(load_labelled_dataset(listed, info.preprocessing))
    probabilities, features = predictor.with_features(images)
    unfamiliar = (np.zeros(len(images), bool) if detector is None or features is None
                  else detector.marks(detector.scores(features)))
    metrics = evaluate_predictions(probabilities, targets, labels, threshold)
    metrics.update(backend=ran, marked_unfamiliar=int(unfamiliar.sum()),
                   by_folder=figures_by_group(probabilities, unfamiliar, labels, folder_groups(uris, labels, data),
                                              threshold))
    seen, overlap = training_overlap(info, thumbnails, cache)
    metrics["training_overlap"] = overlap
    if seen is not None and seen.any() and not seen.all():
        metrics["unseen_images_only"] = evaluate_predictions(probabilities[~seen], targets[~seen], labels[~seen],
                                                             threshold)
    metrics["model_version"], metrics["model_sha256"], metrics["data"] = info.version, info.weights_sha256, data
    write_evaluation(metrics, output, f"{info.version} on {data.rstrip('/').split('/')[-1]}", probabilities, targets)
    return metrics


def labelled_arrays(dataset) -> tuple[np.ndarray, ...]:
    """(images, targets, labels, thumbnails, URIs) of a labelled dataset, in one pass."""
    columns = {IMAGE: [], TARGET: [], LABEL: [], THUMBNAIL: [], URI: []}
    for batch in dataset.iter_batches(batch_size=256, batch_format="numpy"):
        for name in columns:
            columns[name].append(batch[name])
    images, targets, labels, thumbnails, uris = (np.concatenate(columns[name]) for name in columns)
    return images, targets, labels.astype(str), thumbnails, uris.astype(str)


def folder_groups(uris: np.ndarray, labels: np.ndarray, data: str) -> np.ndarray:
    """Each image's sub-folder below its class folder (``flair`` for ``<data>/glioma/flair/x.jpg``), "(class
    folder)" for an image directly in it, "(tumor folders)" for the unknown-type tumor folders' images."""
    def group(uri: str, label: str) -> str:
        below = subfolders(storage.join(data, label), uri.split("#frame=")[0])
        return "(tumor folders)" if below is None else "/".join(below) or "(class folder)"

    return np.array([group(uri, label) for uri, label in zip(uris, labels)], dtype=object)


def training_overlap(info: registry.ModelInfo, thumbnails: np.ndarray,
                     cache: str | None) -> tuple[np.ndarray | None, dict]:
    """Which evaluation images near-duplicate the model's own labelled data, and a record of the check."""
    training = info.metadata.get("training", {})
    folders = [training.get("data"), *training.get("tumor_data", [])]
    if not training.get("data") or not all(storage.is_dir(folder) for folder in folders):
        logger.warning("evaluation images were not checked against the model's training data: it is not readable "
                       "at %s; metrics on images the model was trained on would read too high", folders)
        return None, {"checked": False, "training_data": folders}
    try:
        known = load_labelled_dataset(list_labelled_images(folders[0], tuple(folders[1:])), info.preprocessing,
                                      cache=cache)
    except DatasetError as error:
        logger.warning("evaluation images were not checked against the model's training data: %s", error)
        return None, {"checked": False, "training_data": folders}
    known_thumbnails = np.concatenate([batch[THUMBNAIL] for batch in
                                       known.select_columns([THUMBNAIL]).iter_batches(batch_format="numpy")])
    similarity = np.concatenate([thumbnails[start:start + 1024] @ known_thumbnails.T
                                 for start in range(0, len(thumbnails), 1024)]) if len(thumbnails) else np.zeros((0, 1))
    seen = similarity.max(axis=1) >= DEFAULT_SIMILARITY if len(thumbnails) else np.zeros(0, bool)
    if seen.any():
        logger.warning("%d of %d evaluation images are near-duplicates of the data %s was trained and validated on: "
                       "metrics on them read too high; metrics on the other %d are reported as unseen_images_only",
                       int(seen.sum()), len(seen), info.version, int((~seen).sum()))
    return seen, {"checked": True, "training_data": folders, "near_duplicates": int(seen.sum()),
                  "images": int(len(seen)), "similarity_threshold": DEFAULT_SIMILARITY}
