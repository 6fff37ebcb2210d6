"""The out-of-distribution check (``model.ood``): the fitted distance separates what it was not fitted on, its
threshold marks the asked share of validation, the shipped detector is verified before use, and on real images the
shipped model marks a blank slice, a photograph and a CT slice but not the sample archive's brain MRI."""

import pathlib
import shutil

import cv2
import matplotlib
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from model import registry
from model.decode import decode_file
from model.ood import OOD_FILE, OodDetector, fit_and_describe, fit_detector
from model.onnx_runtime import OnnxPredictor
from model.preprocessing import preprocess_image
from tests.conftest import SAMPLES

SHIPPED = pathlib.Path(registry.resolve_model_dir(registry.DEFAULT_MODEL))  # the current model


def test_the_threshold_marks_the_asked_share_of_validation_and_separates_outliers():
    rng = np.random.default_rng(0)
    covariance = np.diag(np.linspace(0.1, 5.0, 12))
    training = rng.multivariate_normal(np.zeros(12), covariance, 3000)
    validation = rng.multivariate_normal(np.zeros(12), covariance, 2000)
    shifted = rng.multivariate_normal(np.full(12, 0.0), covariance, 200)
    shifted[:, 0] += 2.0  # a shift along the direction training varies least: Euclidean distance would miss it
    detector = fit_detector(training, validation, quantile=0.95)
    assert detector.marks(detector.scores(validation)).mean() == pytest.approx(0.05, abs=0.005)
    assert detector.marks(detector.scores(shifted)).mean() > 0.9
    fresh = rng.multivariate_normal(np.zeros(12), covariance, 2000)
    assert detector.marks(detector.scores(fresh)).mean() == pytest.approx(0.05, abs=0.02)


def test_the_record_counts_what_is_marked_by_label():
    rng = np.random.default_rng(1)
    training, validation = rng.normal(size=(500, 4)), rng.normal(size=(100, 4))
    validation[:3] += 50.0
    labels = np.array(["glioma"] * 2 + ["notumor"] * 98)
    detector, record = fit_and_describe(training, validation, labels, quantile=0.97)
    assert record["validation_marked_by_label"] == {"glioma": 2, "notumor": 1}
    assert record["threshold"] == detector.threshold and record["features"] == 4
    assert OodDetector.from_bytes(detector.to_bytes()).threshold == detector.threshold


def test_a_replaced_detector_is_refused(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(SHIPPED, model)
    arrays = dict(np.load(model / OOD_FILE))
    arrays["threshold"] = np.float64(1e9)  # a detector that would mark nothing
    np.savez_compressed(model / OOD_FILE, **arrays)
    with pytest.raises(registry.ModelError, match="does not match the sha256"):
        OodDetector.for_model(registry.load_model_info(str(model)))


def preprocessed(data: bytes, name: str, info) -> np.ndarray:
    return np.stack([preprocess_image(frame, info.preprocessing) for frame in decode_file(data, name).frames])


def test_the_shipped_model_marks_what_is_not_brain_mri_and_not_the_samples():
    info = registry.load_model_info(str(SHIPPED))
    detector, predictor = OodDetector.for_model(info), OnnxPredictor.for_model(info)
    brain = np.concatenate([preprocessed(path.read_bytes(), path.name, info)
                            for path in sorted((SAMPLES / "archive" / "loose").glob("*.jpg"))])
    photograph = pathlib.Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    unfamiliar = np.concatenate([
        preprocessed(cv2.imencode(".png", np.zeros((200, 200), np.uint8))[1].tobytes(), "blank.png", info),
        preprocessed(photograph.read_bytes(), photograph.name, info),
        preprocessed(pathlib.Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes(), "ct.dcm", info)])
    brain_scores = detector.scores(predictor.with_features(brain)[1])
    unfamiliar_scores = detector.scores(predictor.with_features(unfamiliar)[1])
    assert not detector.marks(brain_scores).any() and detector.marks(unfamiliar_scores).all()
