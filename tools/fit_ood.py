"""Fit a model's out-of-distribution detector on its own training split, measure it, and ship it with the model.

    python -m tools.fit_ood --model models/<version> [--cache DIR]

1. Rebuild the model's duplicate-aware split from the data recorded in its ``model.json`` (as
   ``tools.calibrate_model`` does) and compute the image statistics ``model.ood`` reads for every training and
   validation image.
2. Fit ``model.ood`` on the training images; the threshold marks 1% of the validation images.
3. Measure it on real images that are not brain MRI: every image object pydicom ships (CT, ultrasound, radiographs,
   nuclear medicine, secondary captures, colour images, segmentations; its MR files are left out, since some show a
   head), matplotlib's sample photographs and graphics, and blank, near-blank and noise images; AUROC of the
   validation images against them, and the share of each set marked.
4. Write ``ood.npz`` and its record in ``model.json``, and export the ONNX graph again with the features output
   (checked against TensorFlow), so ONNX Runtime actors score it too.
Needs the training data at the recorded paths.
"""

from __future__ import annotations

import argparse
import gzip
import json
import pathlib

import numpy as np
from sklearn.metrics import roc_auc_score

from infra.ray_runtime import configure_logging, ensure_ray
from model import heldout, registry
from model.card import write_model_card
from model.ood import OOD_FILE, fit_and_describe
from model.predict import ProbabilityPredictor, load_classifier
from model.preprocessing import preprocess_image
from pipeline.retrain import validation_arrays
from tools.calibrate_model import recorded_split


def split_arrays(info: registry.ModelInfo, cache: str | None):
    """(images, targets, labels) of the model's recorded training and validation split."""
    train, validation = recorded_split(info, cache)
    return validation_arrays(train), validation_arrays(validation)


def matplotlib_images(info: registry.ModelInfo) -> np.ndarray:
    import matplotlib

    folder = pathlib.Path(matplotlib.get_data_path()) / "sample_data"
    names = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")
    return heldout.preprocessed([folder / name for name in names], info.preprocessing)


def synthetic_images(info: registry.ModelInfo, count: int = 20) -> np.ndarray:
    """Blank, near-blank (faint noise) and noise slices, through the same preprocessing."""
    rng, side = np.random.default_rng(0), 256
    frames = [np.zeros((side, side), np.float32)]
    frames += [rng.normal(0, 1, (side, side)).astype(np.float32) * 0.01 + 100 for _ in range(count)]
    frames += [rng.uniform(0, 255, (side, side)).astype(np.float32) for _ in range(count)]
    return np.stack([preprocess_image(frame, info.preprocessing) for frame in frames])


def mri_like_images(info: registry.ModelInfo) -> np.ndarray:
    """matplotlib's MR head slice (s1045.ima), reported apart: a head MRI the model never saw."""
    import matplotlib

    path = pathlib.Path(matplotlib.get_data_path()) / "sample_data" / "s1045.ima.gz"
    raw = np.frombuffer(gzip.decompress(path.read_bytes()), np.uint16).reshape(256, 256).astype(np.float32)
    return preprocess_image(raw, info.preprocessing)[np.newaxis]


def measure_detector(detector, features_of, info: registry.ModelInfo, in_scores: np.ndarray) -> dict:
    """How ``detector`` separates the validation images (``in_scores``) from images that are not brain MRI, with
    ``features_of`` (images -> features) from the graph the detector reads: the record's measured part."""
    sets = {"pydicom non-MR images": heldout.pydicom_non_mr(info.preprocessing), "matplotlib photographs and graphics":
            matplotlib_images(info), "blank, near-blank and noise": synthetic_images(info)}
    measured = {name: detector.scores(features_of(images)) for name, images in sets.items()}
    out_scores = np.concatenate(list(measured.values()))
    labels = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    head_mri = float(detector.scores(features_of(mri_like_images(info)))[0])
    return {
        "auroc_validation_vs_out_of_distribution": float(roc_auc_score(labels, np.r_[in_scores, out_scores])),
        "out_of_distribution_sets": {name: {"images": int(len(scores)), "marked": float(detector.marks(scores).mean()),
                                            "auroc": float(roc_auc_score(
                                                np.r_[np.zeros(len(in_scores)), np.ones(len(scores))],
                                                np.r_[in_scores, scores]))}
                                     for name, scores in measured.items()},
        "unseen_head_mri_score": head_mri, "unseen_head_mri_marked": bool(head_mri > detector.threshold)}


def fit_and_measure(model_dir: str, cache: str | None) -> dict:
    info = registry.load_model_info(model_dir)
    predictor = ProbabilityPredictor(load_classifier(info), temperature=info.temperature, features=True)
    (train_images, _, _), (val_images, _, val_labels) = split_arrays(info, cache)
    features = predictor.with_features(train_images)[1]
    validation = predictor.with_features(val_images)[1]
    detector, record = fit_and_describe(features, validation, val_labels)
    record.update(measure_detector(detector, lambda images: predictor.with_features(images)[1], info,
                                   detector.scores(validation)))
    info = registry.attach_file(info, "ood", OOD_FILE, detector.to_bytes(), record)
    return record


def reexport_onnx(model_dir: str) -> None:
    from model.onnx_export import export_and_attach
    from tools.export_onnx import check_images

    info = registry.load_model_info(model_dir)
    export_and_attach(load_classifier(info), info, check_images(info))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder")
    parser.add_argument("--cache", help="preprocessed-image cache folder (as jobs.retrain --cache)")
    args = parser.parse_args()
    configure_logging()
    ensure_ray()
    record = fit_and_measure(args.model, args.cache)
    reexport_onnx(args.model)
    write_model_card(args.model)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
