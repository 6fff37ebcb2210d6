"""The training feed: its epoch order (a shuffle, or a draw in proportion to the images' weights) and its seeded
augmentation."""

import numpy as np

from model.train import epoch_order, training_feed


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


def batches(feed, count: int) -> list[np.ndarray]:
    return [images for images, _ in feed.take(count).as_numpy_iterator()]


def test_the_augmentation_follows_from_the_runs_seed_and_is_drawn_anew_each_pass():
    images = np.random.default_rng(0).integers(0, 256, (24, 48, 48), dtype=np.uint8)
    targets = np.zeros(24, np.int64)
    config = {"seed": 3, "worker_batch_size": 8, "augment": True, "balance_sources": False}
    first, again = training_feed(images, targets, config), training_feed(images, targets, config)
    first_pass = batches(first, 3)
    assert all(np.array_equal(a, b) for a, b in zip(first_pass, batches(again, 3)))  # the same seed, the same pass
    assert not any(np.array_equal(a, b) for a, b in zip(first_pass, batches(first, 3)))  # the next epoch differs
    other = batches(training_feed(images, targets, {**config, "seed": 4}), 3)
    assert not any(np.array_equal(a, b) for a, b in zip(first_pass, other))
    worker = batches(training_feed(images, targets, config, rank=1), 3)
    assert not any(np.array_equal(a, b) for a, b in zip(first_pass, worker))


def test_with_tumor_maps_each_batch_carries_its_known_maps_moved_with_its_images():
    images = np.zeros((16, 48, 48), np.uint8)
    images[:, 8:20, 8:20] = 200  # a bright square, and the map marks it
    maps = np.where(images > 0, 255, 0).astype(np.uint8)
    known = np.arange(16) % 2 == 0
    config = {"seed": 0, "worker_batch_size": 8, "augment": True, "balance_sources": False, "tumor_map_side": 6}
    batch_images, (targets, known_maps) = next(iter(training_feed(images, np.zeros((16, 4), np.float32), config,
                                                                  tumor_maps=(maps, known))))
    assert batch_images.shape == (8, 48, 48) and targets.shape == (8, 4) and known_maps.shape == (8, 6, 6, 2)
    shares = known_maps[..., 0].numpy()
    assert np.all(np.abs(shares.sum(axis=(1, 2)) - 36 * 144 / 2304) < 1.0)  # the square's share, wherever it went
    assert set(np.unique(known_maps[..., 1])) == {0.0, 1.0}


def test_healthy_mirroring_in_the_feed_relabels_the_slices_it_makes_tumor_free():
    images = np.zeros((8, 48, 48), np.uint8)
    images[:, 8:40, 6:42] = 100  # a head, centred
    images[:, 20:28, 32:38] = 230  # a tumor in its right half, and the map marks it
    maps = np.where(images > 200, 255, 0).astype(np.uint8)
    glioma = np.tile(np.array([1, 0, 0, 0], np.float32), (8, 1))
    config = {"seed": 0, "worker_batch_size": 8, "augment": True, "balance_sources": False, "tumor_map_side": 6,
              "healthy_mirror": 1.0}
    batch_images, (targets, known_maps) = next(iter(training_feed(images, glioma, config,
                                                                  tumor_maps=(maps, np.ones(8, bool)))))
    assert np.array_equal(targets.numpy(), np.tile([0, 0, 1, 0], (8, 1)))  # every slice now tumor-free
    assert known_maps[..., 0].numpy().max() == 0 and known_maps[..., 1].numpy().min() == 1  # maps known and empty
    assert batch_images.numpy().max() < 200  # no tumor left in any image, however it was augmented
    plain = training_feed(images, glioma, {**config, "healthy_mirror": 0.0}, tumor_maps=(maps, np.ones(8, bool)))
    assert np.array_equal(next(iter(plain))[1][0].numpy(), glioma)
