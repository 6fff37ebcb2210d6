"""Out-of-distribution scores: the classifier's features of an image in, how unlike the training images it is out.

The score is the Mahalanobis distance of an image's features (the classifier's last hidden layer: the pooled
backbone features beside the column LSTM's summary) to the nearest class mean of the training images, under one
covariance shared by the classes and shrunk towards a scaled identity (Ledoit-Wolf) so it inverts stably. The
features are first projected on their leading principal components, which keeps the stored statistics small.
The threshold is the quantile of the validation images' scores that marks ``1 - quantile`` of them; an input above it
is marked ``ood`` by the scoring pipeline and never counted as tumor or no tumor. The statistics live in ``ood.npz``
beside the weights, their sha256 in ``model.json`` (verified before use, like the weights). No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np

from infra import storage
from model.registry import ModelError, ModelInfo, sha256_hex

OOD_FILE = "ood.npz"
DEFAULT_COMPONENTS = 64
DEFAULT_QUANTILE = 0.99


@dataclasses.dataclass(frozen=True)
class OodDetector:
    """Projection, class means and shared precision of the training features, and the marking threshold."""

    mean: np.ndarray  # (D,) feature mean of the training images
    projection: np.ndarray  # (D, K) leading principal directions
    class_means: np.ndarray  # (C, K) per-class means in the projected space
    precision: np.ndarray  # (K, K) inverse of the shrunk shared covariance
    threshold: float

    def scores(self, features: np.ndarray) -> np.ndarray:
        """``(n, D)`` features -> ``(n,)`` distance to the nearest class mean (larger: less like training)."""
        projected = (np.asarray(features, np.float64) - self.mean) @ self.projection
        distances = [np.einsum("nk,kl,nl->n", projected - centre, self.precision, projected - centre)
                     for centre in self.class_means]
        return np.sqrt(np.maximum(np.min(distances, axis=0), 0.0)).astype(np.float32)

    def marks(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, mean=self.mean.astype(np.float32), projection=self.projection.astype(np.float32),
                            class_means=self.class_means.astype(np.float32),
                            precision=self.precision.astype(np.float32), threshold=np.float64(self.threshold))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "OodDetector":
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return cls(arrays["mean"], arrays["projection"], arrays["class_means"], arrays["precision"],
                       float(arrays["threshold"]))

    @classmethod
    def for_model(cls, info: ModelInfo) -> "OodDetector | None":
        """The model's verified detector, or None for a model without one."""
        record = info.metadata.get("ood")
        if not record:
            return None
        data = storage.read_bytes(storage.join(info.uri, record.get("file", OOD_FILE)))
        if sha256_hex(data) != record.get("sha256"):
            raise ModelError(f"{OOD_FILE} of model {info.version} does not match the sha256 in its model.json")
        return cls.from_bytes(data)


def fit_detector(features: np.ndarray, classes: np.ndarray, validation_features: np.ndarray,
                 components: int = DEFAULT_COMPONENTS, quantile: float = DEFAULT_QUANTILE) -> OodDetector:
    """Fit on training ``features`` with their class indices (``classes``; -1, a tumor of unknown type, is left
    out of the class means and the covariance), the threshold on the validation features' scores."""
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(components, features.shape[1], len(features) - 1), random_state=0).fit(features)
    projected = pca.transform(features)
    known = np.unique(classes[classes >= 0])
    class_means = np.stack([projected[classes == index].mean(axis=0) for index in known])
    centred = np.concatenate([projected[classes == index] - class_means[position]
                              for position, index in enumerate(known)])
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    unthresholded = OodDetector(pca.mean_, pca.components_.T, class_means, precision, np.inf)
    threshold = float(np.quantile(unthresholded.scores(validation_features), quantile))
    return dataclasses.replace(unthresholded, threshold=threshold)
