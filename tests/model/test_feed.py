"""The training feed's epoch order: a shuffle, or a draw in proportion to the images' weights."""

import numpy as np

from model.train import epoch_order


def test_a_weighted_draw_follows_the_weights_and_is_drawn_anew_each_pass():
    weights = np.random.default_rng(1).uniform(0.5, 1.5, 20_011).astype(np.float32)  # summed in float32 they are
    weights[:11] = 1000.0  # off by more than numpy's tolerance for choice; eleven images carry a third of the draw
    order = epoch_order(len(weights), weights, seed=0)
    first, second = (np.fromiter(order.as_numpy_iterator(), np.int64) for _ in range(2))
    assert len(first) == len(weights) and first.min() >= 0 and first.max() < len(weights)
    share = np.mean(first < 11)
    assert 0.3 < share < 0.4  # 11000 / 31000
    assert not np.array_equal(first, second)


def test_without_weights_each_pass_is_a_permutation():
    order = epoch_order(50, None, seed=0)
    first, second = (np.fromiter(order.as_numpy_iterator(), np.int64) for _ in range(2))
    assert sorted(first.tolist()) == list(range(50)) == sorted(second.tolist())
    assert not np.array_equal(first, second)
