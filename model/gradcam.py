"""Heat maps for the classifier: preprocessed slices in, a heat map per slice of the area that most raised a score.

LayerCAM (Jiang et al., 2021), the finer-grained member of the Grad-CAM family (Selvaraju et al., 2017): at one
convolutional block, each position's activations are weighed by the score's positive gradients there (not by one
weight per channel averaged over the map, as Grad-CAM does), summed over the channels and rectified; the coarse map
is resized to the image, set to zero outside the head (``model.preprocessing.head_region``) and scaled to [0, 1].
The block is the MobileNetV3Small backbone's last stride-8 one (``EXPLAINED_LAYER``, 20x20 at 160 px), upstream of
both of the ``bilstm`` head's paths. On hand-outlined gliomas from other hospitals (TCGA-LGG) this puts the map's
peak inside the tumor 2.7 times as often as Grad-CAM on the stride-16 map did (``tools.heatmap_study``; the figures
are in ``docs/benchmarks.md`` and each model's ``model.json``). The score is a logit, taken before the softmax (whose
probabilities saturate near 1 and would leave almost no gradient): a class's own logit, or for ``TUMOR`` the
log-odds of any tumor class against no tumor. For an ensemble (``ArchitectureConfig.members``) each member network
explains the slice as it is; their maps, each scaled to [0, 1], are averaged before the head is cut out. Imports
TensorFlow: the morning report (``pipeline.report.morning``) imports this module lazily, in a worker.
"""

from __future__ import annotations

import cv2
import numpy as np

from model.labels import CLASS_NAMES, NO_TUMOR_INDEX
from model.architecture import backbone_of, member_networks
from model.config import ArchitectureConfig
from model.predict import load_networks
from model.preprocessing import PreprocessConfig, head_region
from model.registry import ModelInfo
from model.tensorflow_runtime import keras, tf

TUMOR = "tumor"  # the target "any tumor class rather than no tumor", the screening decision
TUMOR_INDICES = [index for index in range(len(CLASS_NAMES)) if index != NO_TUMOR_INDEX]
CLASSIFIER_OUTPUT_LAYER = "class_probabilities"  # the softmax Dense layer of every head (model.architecture)
SCALED_INPUT_LAYER = "add_channel"  # the slice scaled to [-1, 1] with a channel axis (model.architecture)
EXPLAINED_LAYER = "expanded_conv_2/Add"  # the backbone's last stride-8 block (20x20x24 at 160 px)
HEAT_MAP_METHOD = f"LayerCAM of the tumor log-odds at {EXPLAINED_LAYER}, members averaged, zero outside the head"


class NetworkGradCam:
    """Heat maps for one network (a single classifier); built once, then called on batches of ``(n, S, S)`` uint8
    slices. The network is split at the explained block's output (``layer``, default ``EXPLAINED_LAYER``): below it,
    from the input; above it, the rest of the backbone, then the head up to the softmax's input."""

    def __init__(self, classifier: keras.Model, chunk_size: int = 16, layer: str = EXPLAINED_LAYER):
        backbone = backbone_of(classifier)
        explained = backbone.get_layer(layer).output
        maps = backbone.get_output_at(0)  # the backbone's outputs where the classifier calls it
        dense = classifier.get_layer(CLASSIFIER_OUTPUT_LAYER)
        self.channels = keras.Model(classifier.inputs, classifier.get_layer(SCALED_INPUT_LAYER).output)
        self.below = keras.Model(backbone.input, explained)
        self.above = BackboneAbove(backbone, explained)
        self.head = keras.Model(maps, dense.input)
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
        """LayerCAM at the explained block's own resolution: each position's activations weighed by their own
        positive gradients, summed over the channels."""
        with tf.GradientTape() as tape:
            features = self.below(self.channels(tf.constant(images), training=False), training=False)
            tape.watch(features)
            penultimate = self.head(self.above(features), training=False)
            scores = target_scores(tf.matmul(penultimate, self.kernel) + self.bias, target)
        gradients = tape.gradient(scores, features)  # samples are independent: d(sum)/d(features) is per sample
        return tf.nn.relu(tf.reduce_sum(tf.nn.relu(gradients) * features, axis=-1)).numpy()


class BackboneAbove:
    """The backbone from one block's output to its own outputs; an output that is that block's passes through."""

    def __init__(self, backbone: keras.Model, explained: tf.Tensor):
        outputs = backbone.outputs
        self.passes = [output is explained for output in outputs]
        rest = [output for output in outputs if output is not explained]
        self.model = keras.Model(explained, rest) if rest else None

    def __call__(self, features: tf.Tensor) -> list[tf.Tensor] | tf.Tensor:
        computed = self.model(features, training=False) if self.model is not None else []
        remaining = iter(computed if isinstance(computed, (list, tuple)) else [computed])
        outputs = [features if passes else next(remaining) for passes in self.passes]
        return outputs if len(outputs) > 1 else outputs[0]


class GradCam:
    """Heat maps for a loaded model: its one network's, or the mean of its members' (``target`` None: each
    member's own predicted class)."""

    def __init__(self, classifier: keras.Model, architecture: ArchitectureConfig | None = None,
                 chunk_size: int = 16, preprocessing: PreprocessConfig | None = None):
        architecture = architecture or ArchitectureConfig()
        side = classifier.inputs[0].shape[1]
        self.networks = [NetworkGradCam(network, chunk_size)
                         for network in member_networks(classifier, architecture, side)]
        self.preprocessing = preprocessing or PreprocessConfig()

    @classmethod
    def from_model_info(cls, info: ModelInfo, expected_sha256: str | None = None) -> "GradCam":
        """For the verified model ``info`` describes (``expected_sha256`` pins its weights, as scoring does)."""
        return cls.from_networks(load_networks(info, expected_sha256), preprocessing=info.preprocessing)

    @classmethod
    def from_networks(cls, networks: list[keras.Model], chunk_size: int = 16,
                      preprocessing: PreprocessConfig | None = None) -> "GradCam":
        """For single networks already loaded (``model.predict.load_networks``: an ensemble's members); the head is
        found with ``preprocessing``'s threshold."""
        explainer = cls.__new__(cls)
        explainer.networks = [NetworkGradCam(network, chunk_size) for network in networks]
        explainer.preprocessing = preprocessing or PreprocessConfig()
        return explainer

    def __call__(self, images: np.ndarray, target: str | None = None) -> np.ndarray:
        """``(n, S, S)`` uint8 -> ``(n, S, S)`` float32 heat maps in [0, 1] (see ``NetworkGradCam``), zero outside
        the head."""
        maps = [network(images, target) for network in self.networks]
        mean = within_head(np.mean(maps, axis=0), images, self.preprocessing)
        top = mean.max(axis=(1, 2), keepdims=True)
        return np.divide(mean, top, out=np.zeros_like(mean), where=top > 0).astype(np.float32)


def tumor_heat_maps(images: np.ndarray, info: ModelInfo) -> np.ndarray:
    """The morning report's heat maps: the tumor score's, by the verified model ``info`` describes."""
    return GradCam.from_model_info(info, info.weights_sha256)(images, target=TUMOR)


def within_head(maps: np.ndarray, images: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Each map set to zero outside its slice's head (``model.preprocessing.head_region``); a slice without one
    keeps its map."""
    heads = np.stack([head_region(image, config) for image in images]) if len(images) else np.zeros(maps.shape, bool)
    keep = heads | ~heads.any(axis=(1, 2), keepdims=True)
    return np.where(keep, maps, 0.0).astype(np.float32)


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
