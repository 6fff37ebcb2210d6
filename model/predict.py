"""Loading a verified classifier and batch inference with it: uint8 preprocessed slices in, class probabilities out.

:func:`load_classifier` builds the network from code and loads the weights the registry has verified (sha256 and
HDF5 signature). One compiled ``tf.function`` per model is called on fixed-size chunks (eager ``model.predict`` is
slower on CPU). Used by training-time validation, the evaluation job and the scoring pipeline's inference actors.
"""

from __future__ import annotations

import pathlib
import tempfile

import numpy as np

from infra import storage
from model.tensorflow_runtime import keras, native_stderr_silenced, quiet_requested, tf
from model.architecture import build_classifier, with_features
from model.calibration import apply_temperature
from model.registry import WEIGHTS_FILE, ModelError, ModelInfo, verify_weights


def configure_tensorflow(cpu_threads: int | None = None, use_gpu: bool = False) -> None:
    """Bound TensorFlow's CPU threads and turn on GPU memory growth; call before the first TensorFlow op."""
    try:
        if cpu_threads:
            tf.config.threading.set_intra_op_parallelism_threads(cpu_threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, cpu_threads)))
        with native_stderr_silenced(quiet_requested()):  # the CUDA probe's notices on a machine without CUDA
            gpus = tf.config.list_physical_devices("GPU") if use_gpu else []
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        pass  # TensorFlow already initialised in this process: its settings stay as they are.


def load_classifier(info: ModelInfo, expected_sha256: str | None = None):
    """The Keras classifier described by ``info``, built from code and loaded with its verified weights.

    ``expected_sha256`` pins the weights a caller resolved earlier (the screening driver stamps every row with it):
    weights that differ, e.g. after a promotion in between, raise :class:`ModelError` instead of scoring silently
    with another model."""
    weights = verified_weights(info, expected_sha256)
    model = build_classifier(info.architecture, info.preprocessing.image_size)
    with tempfile.TemporaryDirectory() as scratch:
        local = pathlib.Path(scratch) / WEIGHTS_FILE
        local.write_bytes(weights)
        model.load_weights(str(local))
    return model


def verified_weights(info: ModelInfo, expected_sha256: str | None = None) -> bytes:
    """The model's weights file, checked against ``expected_sha256`` and the registry's sha256 and signature."""
    if expected_sha256 is not None and info.weights_sha256 != expected_sha256:
        raise ModelError(f"model at {info.uri} has weights sha256 {info.weights_sha256}, but this run resolved "
                         f"{expected_sha256}: the model changed after the run started; refusing to score with it")
    weights = storage.read_bytes(info.weights_uri)
    verify_weights(info, weights)
    return weights


def load_networks(info: ModelInfo, expected_sha256: str | None = None) -> list:
    """The model's single networks as standalone classifiers (uint8 slices in), with their verified weights: the
    classifier itself, or each member of an ensemble read straight from its group in the weights file, without
    building the ensemble's graph (two thirds of the time ``load_classifier`` takes for a two-member ensemble)."""
    if not info.architecture.is_ensemble:
        return [load_classifier(info, expected_sha256)]
    import h5py  # the weights file's format (tf_keras HDF5): one group per top-level layer, member_<i> for members

    weights = verified_weights(info, expected_sha256)
    networks = []
    with tempfile.TemporaryDirectory() as scratch:
        local = pathlib.Path(scratch) / WEIGHTS_FILE
        local.write_bytes(weights)
        with h5py.File(local, "r") as saved:
            for index in range(info.architecture.members):
                group = saved[f"member_{index}"]
                network = build_classifier(info.architecture.member(), info.preprocessing.image_size)
                values = [group[name][()] for name in group.attrs["weight_names"]]
                # saved as load_weights reads them: trainable weights first, then the others
                symbolic = network.trainable_weights + network.non_trainable_weights
                if len(symbolic) != len(values):
                    raise ModelError(f"model {info.version}: member {index} holds {len(values)} weights, its "
                                     f"architecture {len(symbolic)}")
                keras.backend.batch_set_value(zip(symbolic, values))
                networks.append(network)
    return networks


class ProbabilityPredictor:
    """Wraps a Keras classifier in a compiled inference function; ``temperature`` calibrates its probabilities
    (``model.calibration``; a model's own is ``ModelInfo.temperature``). With ``features``, it also gives the image
    statistics the out-of-distribution score reads (``with_features``)."""

    def __init__(self, model, batch_size: int = 64, temperature: float = 1.0, features: bool = False):
        self.model = with_features(model) if features else model
        self.batch_size = batch_size
        self.temperature = temperature
        self._infer = tf.function(lambda images: self.model(images, training=False), reduce_retracing=True)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """``(n, S, S)`` uint8 -> ``(n, classes)`` float32 probabilities."""
        return self.with_features(images)[0]

    def with_features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(n, S, S)`` uint8 -> (probabilities, features or None when built without them)."""
        outputs = [self._infer(tf.constant(images[start:start + self.batch_size]))
                   for start in range(0, len(images), self.batch_size)]
        if not outputs:
            shapes = self.model.output_shape if isinstance(self.model.output_shape, list) else [self.model.output_shape]
            outputs = [[np.zeros((0, shape[-1]), np.float32) for shape in shapes]]
        parts = [[np.asarray(part) for part in (chunk if isinstance(chunk, (list, tuple)) else [chunk])]
                 for chunk in outputs]
        probabilities = apply_temperature(np.concatenate([p[0] for p in parts]).astype(np.float32), self.temperature)
        features = np.concatenate([p[1] for p in parts]).astype(np.float32) if len(parts[0]) > 1 else None
        return probabilities, features


def masked_crossentropy_numpy(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Mean of ``-log(sum(mask * p))``: the training loss, computed on numpy arrays."""
    covered = np.clip((probabilities * targets).sum(axis=1), 1e-7, 1.0)
    return float(-np.log(covered).mean())
