"""Grad-CAM for the classifier: preprocessed slices in, a heat map per slice of where the model found its evidence.

Gradient-weighted class activation mapping (Selvaraju et al., 2017): the gradient of a class score with respect to a
convolutional feature map, averaged over the map's positions, weighs the map's channels; their weighted sum,
rectified, is a coarse map of the evidence, resized here to the image and scaled to [0, 1]. The score is a logit,
taken before the softmax (whose probabilities saturate near 1 and would leave almost no gradient): a class's own
logit, or for ``TUMOR`` the log-odds of any tumor class against no tumor. The feature map is the MobileNetV3Small
backbone's, a model nested in the classifier (``model.architecture``): for the ``bilstm`` head its first output,
the stride-16 map (10x10 at 160 px), the last map both of the head's paths read (the column BiLSTM and, through the
final convolutions, the pooled map), so the heat map covers what the LSTM saw; for the other heads the final
stride-32 map. For an ensemble (``ArchitectureConfig.members``) each member network explains the slice as it is;
their maps, each scaled to [0, 1], are averaged and the mean scaled to [0, 1] again. Imports TensorFlow: the
morning report (``pipeline.report``) imports this module lazily, in a worker.
"""

from __future__ import annotations

import cv2
import numpy as np

from model.labels import CLASS_NAMES, NO_TUMOR_INDEX
from model.architecture import backbone_of, member_networks
from model.config import ArchitectureConfig
from model.predict import load_networks
from model.registry import ModelInfo
from model.tensorflow_runtime import keras, tf

TUMOR = "tumor"  # the target "any tumor class rather than no tumor", the screening decision
TUMOR_INDICES = [index for index in range(len(CLASS_NAMES)) if index != NO_TUMOR_INDEX]
CLASSIFIER_OUTPUT_LAYER = "class_probabilities"  # the softmax Dense layer of every head (model.architecture)


class NetworkGradCam:
    """Heat maps for one network (a single classifier); built once, then called on batches of ``(n, S, S)`` uint8
    slices."""

    def __init__(self, classifier: keras.Model, chunk_size: int = 16):
        backbone = backbone_of(classifier)
        maps = backbone.get_output_at(0)  # the backbone's outputs where the classifier calls it
        feature_map = maps[0] if isinstance(maps, (list, tuple)) else maps
        dense = classifier.get_layer(CLASSIFIER_OUTPUT_LAYER)
        self.model = keras.Model(classifier.inputs, [feature_map, dense.input])
        self.kernel, self.bias = dense.kernel, dense.bias
        self.chunk_size = chunk_size

    def __call__(self, images: np.ndarray, target: str | None = None) -> np.ndarray:
        """``(n, S, S)`` uint8 -> ``(n, S, S)`` float32 heat maps in [0, 1]. ``target``: a class name, ``TUMOR``,
        or None for each slice's predicted class."""
        if len(images) == 0:
            return np.zeros(images.shape, dtype=np.float32)
        chunks = [self.coarse_maps(images[start:start + self.chunk_size], target)
                  for start in range(0, len(images), self.chunk_size)]
        return np.stack([to_image(cam, images.shape[1:]) for cam in np.concatenate(chunks)])

    def coarse_maps(self, images: np.ndarray, target: str | None) -> np.ndarray:
        """The rectified, gradient-weighted feature maps at the feature map's own resolution."""
        with tf.GradientTape() as tape:
            features, penultimate = self.model(tf.constant(images), training=False)
            logits = tf.matmul(penultimate, self.kernel) + self.bias
            scores = target_scores(logits, target)
        gradients = tape.gradient(scores, features)  # samples are independent: d(sum)/d(features) is per sample
        channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        return tf.nn.relu(tf.reduce_sum(channel_weights * features, axis=-1)).numpy()


class GradCam:
    """Heat maps for a loaded model: its one network's, or the mean of its members' (``target`` None: each
    member's own predicted class)."""

    def __init__(self, classifier: keras.Model, architecture: ArchitectureConfig | None = None,
                 chunk_size: int = 16):
        architecture = architecture or ArchitectureConfig()
        side = classifier.inputs[0].shape[1]
        self.networks = [NetworkGradCam(network, chunk_size)
                         for network in member_networks(classifier, architecture, side)]

    @classmethod
    def from_model_info(cls, info: ModelInfo, expected_sha256: str | None = None) -> "GradCam":
        """For the verified model ``info`` describes (``expected_sha256`` pins its weights, as scoring does)."""
        return cls.from_networks(load_networks(info, expected_sha256))

    @classmethod
    def from_networks(cls, networks: list[keras.Model], chunk_size: int = 16) -> "GradCam":
        """For single networks already loaded (``model.predict.load_networks``: an ensemble's members)."""
        explainer = cls.__new__(cls)
        explainer.networks = [NetworkGradCam(network, chunk_size) for network in networks]
        return explainer

    def __call__(self, images: np.ndarray, target: str | None = None) -> np.ndarray:
        """``(n, S, S)`` uint8 -> ``(n, S, S)`` float32 heat maps in [0, 1] (see ``NetworkGradCam``)."""
        maps = [network(images, target) for network in self.networks]
        if len(maps) == 1:
            return maps[0]
        mean = np.mean(maps, axis=0)
        top = mean.max(axis=(1, 2), keepdims=True)
        return np.divide(mean, top, out=np.zeros_like(mean), where=top > 0).astype(np.float32)


def target_scores(logits: tf.Tensor, target: str | None) -> tf.Tensor:
    """One score per slice: the logit of ``target`` (or of the predicted class), or any tumor's log-odds."""
    if target == TUMOR:
        tumor = tf.reduce_logsumexp(tf.gather(logits, TUMOR_INDICES, axis=1), axis=1)
        return tumor - logits[:, NO_TUMOR_INDEX]
    if target is None:
        return tf.reduce_max(logits, axis=1)  # the predicted class's logit
    if target not in CLASS_NAMES:
        raise ValueError(f"unknown Grad-CAM target {target!r}: expected one of {', '.join(CLASS_NAMES)} or {TUMOR}")
    return logits[:, CLASS_NAMES.index(target)]


def to_image(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A coarse map resized (bilinear) to ``shape`` and divided by its maximum; all zeros when it has none."""
    resized = np.maximum(cv2.resize(cam.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR), 0)
    top = float(resized.max())
    return (resized / top if top > 0 else resized).astype(np.float32)


def overlay(image: np.ndarray, heat_map: np.ndarray, opacity: float = 0.6) -> np.ndarray:
    """A grey ``(S, S)`` uint8 slice with its heat map blended on in the jet colour map: ``(S, S, 3)`` RGB uint8.
    The colour's weight grows with the heat, so the anatomy stays as it is where the model did not look."""
    colours = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.round(heat_map * 255)), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    grey = np.repeat(image[:, :, np.newaxis], 3, axis=2).astype(np.float32)
    weight = opacity * heat_map[:, :, np.newaxis]
    return np.clip(grey * (1 - weight) + colours * weight, 0, 255).astype(np.uint8)
