"""The weight average kept during training (``model.averaging``): after every batch it moves towards the new weights
by the warmed-up decay, and it starts again from where a checkpoint left it."""

import numpy as np
import pytest

from model.averaging import WeightAverage
from model.tensorflow_runtime import keras


def tiny_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.BatchNormalization()])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def expected_average(snapshots: list[list[np.ndarray]], start: list[np.ndarray], decay: float, step: int = 0):
    average = [value.astype(np.float64) for value in start]
    for weights in snapshots:
        step += 1
        rate = min(decay, (1 + step) / (10 + step))
        average = [rate * a + (1 - rate) * w for a, w in zip(average, weights)]
    return average


def test_the_average_follows_every_batch_with_the_warmed_up_decay():
    model = tiny_model()
    rng = np.random.default_rng(0)
    inputs, targets = rng.normal(size=(64, 3)), rng.normal(size=(64, 2))
    start = model.get_weights()
    averaging = WeightAverage(0.9).start(start)
    snapshots = []
    recorder = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: snapshots.append(
        model.get_weights()))
    model.fit(inputs, targets, batch_size=8, epochs=2, verbose=0, callbacks=[averaging, recorder])
    assert averaging.steps == len(snapshots) == 16
    for got, want in zip(averaging.averaged_weights(), expected_average(snapshots, start, 0.9)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # BatchNormalization's statistics included
    assert not np.allclose(averaging.averaged_weights()[0], model.get_weights()[0])


def test_a_restored_average_continues_from_its_step():
    model = tiny_model()
    rng = np.random.default_rng(1)
    inputs, targets = rng.normal(size=(16, 3)), rng.normal(size=(16, 2))
    saved = [value + 1.0 for value in model.get_weights()]
    averaging = WeightAverage(0.99).start(saved, step=500)
    snapshots = []
    recorder = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: snapshots.append(
        model.get_weights()))
    model.fit(inputs, targets, batch_size=8, epochs=1, verbose=0, callbacks=[averaging, recorder])
    assert averaging.steps == 502
    for got, want in zip(averaging.averaged_weights(), expected_average(snapshots, saved, 0.99, step=500)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_a_decay_outside_the_open_interval_is_refused(decay):
    with pytest.raises(ValueError, match="between 0 and 1"):
        WeightAverage(decay)
