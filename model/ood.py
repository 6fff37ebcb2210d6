"""Out-of-distribution scores: an image's statistics from the classifier in, how unlike the training images it is out.

The features are the mean and standard deviation over the image of each channel of two early backbone blocks
(``model.architecture.with_features``): what an image is made of, not which class it resembles. The score is their
Mahalanobis distance to the training images' mean, under the training covariance shrunk towards a scaled identity
(Ledoit-Wolf) so that it inverts stably. The threshold is the quantile of the validation images' scores that marks
``1 - quantile`` of them; an input above it is marked ``ood`` by the scoring pipeline and never counted as tumor or
no tumor. The statistics live in ``ood.npz`` beside the weights, their sha256 in ``model.json`` (verified before
use, like the weights). Fitted and measured by ``tools.fit_ood``. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np

from infra import storage
from model.registry import ModelError, ModelInfo, sha256_hex

OOD_FILE = "ood.npz"
DEFAULT_QUANTILE = 0.99


@dataclasses.dataclass(frozen=True)
class OodDetector:
    """Mean and shrunk precision of the training images' statistics, and the marking threshold."""

    mean: np.ndarray  # (D,)
    precision: np.ndarray  # (D, D)
    threshold: float

    def scores(self, features: np.ndarray) -> np.ndarray:
        """``(n, D)`` features -> ``(n,)`` Mahalanobis distances (larger: less like the training images)."""
        centred = np.asarray(features, np.float64) - self.mean
        squared = np.einsum("nk,kl,nl->n", centred, self.precision, centred)
        return np.sqrt(np.maximum(squared, 0.0)).astype(np.float32)

    def marks(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, mean=self.mean.astype(np.float64), precision=self.precision.astype(np.float64),
                            threshold=np.float64(self.threshold))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "OodDetector":
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return cls(arrays["mean"], arrays["precision"], float(arrays["threshold"]))

    @classmethod
    def for_model(cls, info: ModelInfo, export: str | None = None) -> "OodDetector | None":
        """The model's verified detector, or None for a model without one. With ``export`` ("onnx_int8"), the
        threshold refitted on that graph's own features where its record holds one (``model.quantize``): int8
        rounding moves the scores, so the float32 threshold would mark a different share."""
        record = info.metadata.get("ood")
        if not record:
            return None
        data = storage.read_bytes(storage.join(info.uri, record.get("file", OOD_FILE)))
        if sha256_hex(data) != record.get("sha256"):
            raise ModelError(f"{OOD_FILE} of model {info.version} does not match the sha256 in its model.json")
        detector = cls.from_bytes(data)
        refitted = info.metadata.get(export, {}).get("ood_threshold") if export else None
        return detector if refitted is None else dataclasses.replace(detector, threshold=float(refitted))


def fit_detector(features: np.ndarray, validation_features: np.ndarray,
                 quantile: float = DEFAULT_QUANTILE) -> OodDetector:
    """Fit on the training images' ``features``; the threshold is the ``quantile`` of the validation scores."""
    from sklearn.covariance import LedoitWolf

    estimate = LedoitWolf().fit(np.asarray(features, np.float64))
    unthresholded = OodDetector(estimate.location_, estimate.precision_, np.inf)
    threshold = float(np.quantile(unthresholded.scores(validation_features), quantile))
    return dataclasses.replace(unthresholded, threshold=threshold)


METHOD = ("Mahalanobis distance to the training images' mean (Ledoit-Wolf covariance) of the per-channel mean and "
          "standard deviation of two early backbone blocks; threshold at the {quantile:.0%} quantile of the validation "
          "images")


def fit_and_describe(training_features: np.ndarray, validation_features: np.ndarray, validation_labels: np.ndarray,
                     quantile: float = DEFAULT_QUANTILE) -> tuple[OodDetector, dict]:
    """The detector, and its ``model.json`` record: method, threshold, and the share of training and validation
    images it marks (the validation ones by label, since a marked tumor slice is one the flag list does not show)."""
    detector = fit_detector(training_features, validation_features, quantile)
    marked = detector.marks(detector.scores(validation_features))
    labels, counts = np.unique(np.asarray(validation_labels)[marked], return_counts=True)
    return detector, {
        "method": METHOD.format(quantile=quantile), "features": int(training_features.shape[1]),
        "threshold": detector.threshold, "training_images": int(len(training_features)),
        "validation_images": int(len(validation_features)), "validation_marked": float(marked.mean()),
        "training_marked": float(detector.marks(detector.scores(training_features)).mean()),
        "validation_marked_by_label": {str(label): int(count) for label, count in zip(labels, counts)}}
