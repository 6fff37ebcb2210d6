"""An exponential moving average (EMA) of the weights during training: the weights of each step in, their running
average out, which validation, checkpoints and the shipped model use.

After every training batch ``average = d * average + (1 - d) * weights`` for every weight, BatchNormalization's
moving statistics included, with ``d = min(decay, (1 + step) / (10 + step))`` so the first steps do not drag the
average towards the random initialisation. Averaging the last few thousand steps smooths the noise of the final
epochs, which a cosine schedule that ends near zero only partly removes. The average and its step count are part of
every checkpoint, so a resumed run continues the same average.
"""

from __future__ import annotations

import numpy as np

from model.tensorflow_runtime import keras, tf


class WeightAverage(keras.callbacks.Callback):
    """Keeps the average of a model's weights in non-trainable shadow variables, updated by one compiled function
    after each batch; ``averaged_weights`` gives it in ``get_weights`` order.

    ``start`` creates the shadow variables; call it outside any distribution strategy's scope (they are plain
    variables on each worker, read from the worker's own copy of the weights, so no collective is needed)."""

    def __init__(self, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight-average decay must be between 0 and 1, got {decay}")
        self.decay = decay
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.shadow: list[tf.Variable] = []
        self._update = tf.function(self.update)

    def start(self, weights: list[np.ndarray], step: int = 0) -> "WeightAverage":
        """Begin from ``weights`` (the model's, or a checkpoint's average) at ``step`` updates."""
        self.shadow = [tf.Variable(value, trainable=False) for value in weights]
        self.step.assign(step)
        return self

    def update(self) -> None:
        self.step.assign_add(1)
        step = tf.cast(self.step, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + step) / (10.0 + step))
        for average, weight in zip(self.shadow, self.model.weights):
            average.assign(decay * average + (1.0 - decay) * tf.cast(weight, average.dtype))

    def on_train_batch_end(self, batch, logs=None) -> None:
        self._update()

    def averaged_weights(self) -> list[np.ndarray]:
        return [average.numpy() for average in self.shadow]

    @property
    def steps(self) -> int:
        return int(self.step.numpy())
