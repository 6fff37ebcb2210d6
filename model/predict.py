"""Batch inference with a loaded classifier: uint8 preprocessed slices in, class probabilities out.

One compiled ``tf.function`` per model, called on fixed-size chunks (eager ``model.predict`` is slower on CPU).
Used by training-time validation, the evaluation job and the scoring pipeline's inference actors.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def configure_tensorflow(cpu_threads: int | None = None, use_gpu: bool = False) -> None:
    """Bound TensorFlow's CPU threads and turn on GPU memory growth; call before the first TensorFlow op."""
    try:
        if cpu_threads:
            tf.config.threading.set_intra_op_parallelism_threads(cpu_threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, cpu_threads)))
        for gpu in tf.config.list_physical_devices("GPU") if use_gpu else []:
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        pass  # TensorFlow already initialised in this process: its settings stay as they are.


class ProbabilityPredictor:
    """Wraps a Keras classifier in a compiled inference function."""

    def __init__(self, model, batch_size: int = 64):
        self.model = model
        self.batch_size = batch_size
        self._infer = tf.function(lambda images: model(images, training=False), reduce_retracing=True)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """``(n, S, S)`` uint8 -> ``(n, classes)`` float32 probabilities."""
        if len(images) == 0:
            return np.zeros((0, self.model.output_shape[-1]), dtype=np.float32)
        chunks = [self._infer(tf.constant(images[start:start + self.batch_size])).numpy()
                  for start in range(0, len(images), self.batch_size)]
        return np.concatenate(chunks).astype(np.float32)


def masked_crossentropy_numpy(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Mean of ``-log(sum(mask * p))``: the training loss, computed on numpy arrays."""
    covered = np.clip((probabilities * targets).sum(axis=1), 1e-7, 1.0)
    return float(-np.log(covered).mean())
