"""Training-time augmentation: reproducible from its seed, shape and type kept, and the intensity curves give new
tissue contrasts while the background stays dark."""

import numpy as np

from model.augment import AugmentConfig, augment_batch, healthy_mirror, healthy_mirror_batch, mix_spectrum, random_curve


def augment_images(images: np.ndarray, seed: int, config: AugmentConfig = AugmentConfig()) -> np.ndarray:
    augmented, maps = augment_batch(images, seed, config)
    assert maps is None
    return augmented


def slices(count: int = 6, side: int = 48) -> np.ndarray:
    """Dark background, a grey disc of 'brain' and a brighter 'lesion' in it."""
    rows, columns = np.mgrid[:side, :side]
    head = (rows - side / 2) ** 2 + (columns - side / 2) ** 2 < (side / 2.5) ** 2
    lesion = (rows - side / 2) ** 2 + (columns - side / 1.7) ** 2 < (side / 10) ** 2
    image = np.where(head, 110, 0) + np.where(lesion, 90, 0)
    return np.repeat(image[None].astype(np.uint8), count, axis=0)


def test_an_epoch_s_augmentation_is_reproducible_from_its_seed_and_keeps_shape_and_type():
    images = slices()
    first, again, other = augment_images(images, 7), augment_images(images, 7), augment_images(images, 8)
    assert first.shape == images.shape and first.dtype == np.uint8
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert augment_images(images[:0], 7).shape == (0, 48, 48)


def test_an_intensity_curve_gives_the_tissues_new_brightness_and_leaves_the_background_dark():
    image = slices(1)[0].astype(np.float32)
    rising = AugmentConfig(curve_probability=1.0, curve_reversal=0.0)
    rng = np.random.default_rng(0)
    brain, lesion = image == 110, image == 200
    contrasts = set()
    for _ in range(40):
        mapped = random_curve(image, rng, rising)
        assert mapped.shape == image.shape and (mapped[image == 0] == 0).all()
        assert mapped[lesion].mean() >= mapped[brain].mean()  # a rising curve keeps the tissues' order
        contrasts.add(round(float(mapped[lesion].mean() - mapped[brain].mean()), 0))
    assert len(contrasts) > 20  # each draw its own contrast
    swapped = AugmentConfig(curve_probability=1.0, curve_reversal=1.0)
    orders = [random_curve(image, rng, swapped) for _ in range(40)]
    assert any(mapped[lesion].mean() < mapped[brain].mean() for mapped in orders)  # ... and some curves swap it



def test_curves_are_drawn_only_when_asked_for():
    images = slices(4)
    plain = [augment_images(images, seed, AugmentConfig()) for seed in range(3)]
    curved = [augment_images(images, seed, AugmentConfig(curve_probability=1.0)) for seed in range(3)]
    assert all(not np.array_equal(a, b) for a, b in zip(plain, curved))
    assert all(np.array_equal(a, augment_images(images, seed)) for seed, a in enumerate(plain))


def test_a_tumor_map_moves_with_its_slice_and_changes_none_of_the_slices_draws():
    images = slices()
    maps = np.where(images == 200, 255, 0).astype(np.uint8)  # the lesion
    augmented, moved = augment_batch(images, 5, AugmentConfig(), maps)
    assert np.array_equal(augmented, augment_images(images, 5)) and moved.shape == maps.shape
    geometry_only = AugmentConfig(gamma_range=(1, 1), contrast_range=(1, 1), brightness_range=0, blur_probability=0,
                                  noise_probability=0, downsample_probability=0, bias_probability=0,
                                  sharpen_probability=0, jpeg_probability=0)
    augmented, moved = augment_batch(images, 5, geometry_only, maps)
    for image, tumor_map, original in zip(augmented, moved, images):
        lesion, marked = image > 160, tumor_map > 127
        assert not np.array_equal(image, original)  # moved
        assert (lesion & marked).sum() / (lesion | marked).sum() > 0.8


def test_spectrum_mixing_takes_another_slices_brightness_and_keeps_the_anatomy_and_dark_background():
    image = slices(1)[0]
    darker = (slices(1)[0] * 0.45).astype(np.uint8)  # the same anatomy, another scanner's look
    brain, lesion = image == 110, image == 200
    rng = np.random.default_rng(0)
    kept = mix_spectrum(image, darker, rng, AugmentConfig(spectrum_weight=(0.0, 0.0)))
    assert np.abs(kept - image).max() < 0.5  # no weight on the other slice: the slice itself
    moved = mix_spectrum(image, darker, rng, AugmentConfig(spectrum_weight=(1.0, 1.0)))
    assert (moved[image == 0] == 0).all()
    assert 40 < moved[brain].mean() < 80  # toward the other slice's brain (49), from 110
    assert moved[lesion].mean() > moved[brain].mean() + 30  # the lesion still stands out where it was


def test_spectrum_mixing_is_drawn_only_when_asked_for_and_from_the_batchs_seed():
    images = np.concatenate([slices(3), (slices(3) * 0.5).astype(np.uint8)])
    mixing = AugmentConfig(spectrum_mix_probability=1.0)
    plain, mixed = augment_images(images, 3), augment_images(images, 3, mixing)
    assert np.array_equal(mixed, augment_images(images, 3, mixing)) and mixed.dtype == np.uint8
    assert all(not np.array_equal(a, b) for a, b in zip(plain, mixed))
    assert np.array_equal(augment_images(images[:1], 3, mixing), augment_images(images[:1], 3))  # none to mix with


def head_with_tumor(centre_column: float, side: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A head whose left and right halves differ (a brighter band on its left), a tumor at ``centre_column``, and
    the tumor's map."""
    rows, columns = np.mgrid[:side, :side]
    head = (rows - side / 2) ** 2 + (columns - side / 2) ** 2 < (side / 2.5) ** 2
    tumor = (rows - side / 2) ** 2 + (columns - centre_column) ** 2 < (side / 12) ** 2
    image = np.where(head, 100, 0) + np.where(head & (rows < side / 3) & (columns < side / 2), 30, 0)
    image = np.where(tumor, 230, image).astype(np.uint8)
    return image, np.where(tumor, 255, 0).astype(np.uint8)


def test_healthy_mirroring_keeps_the_half_without_the_tumor_and_mirrors_it_over_the_other():
    image, tumor_map = head_with_tumor(centre_column=34)  # the tumor on the right
    mirrored = healthy_mirror(image, tumor_map, AugmentConfig())
    assert mirrored is not None and mirrored.dtype == np.uint8 and mirrored.max() < 230  # the tumor is gone
    assert np.array_equal(mirrored[:, :24], image[:, :24])  # the healthy left half as it was
    assert np.array_equal(mirrored[:, 24:], mirrored[:, :24][:, ::-1])  # and its mirror image on the right
    left_tumor, left_map = image[:, ::-1].copy(), tumor_map[:, ::-1].copy()  # the tumor on the left
    assert np.array_equal(healthy_mirror(left_tumor, left_map, AugmentConfig()), mirrored[:, ::-1])


def test_healthy_mirroring_leaves_a_tumor_at_the_midline_and_a_slice_without_a_map():
    config = AugmentConfig()
    assert healthy_mirror(*head_with_tumor(centre_column=26), config) is None  # across the midline
    assert healthy_mirror(*head_with_tumor(centre_column=32), AugmentConfig(healthy_mirror_margin=0.2)) is None
    image, _ = head_with_tumor(centre_column=34)
    assert healthy_mirror(image, np.zeros_like(image), config) is None  # no tumor mapped: nothing to do
    assert healthy_mirror(np.zeros_like(image), head_with_tumor(centre_column=34)[1], config) is None  # no head


def test_a_batch_makes_only_its_one_sided_tumors_tumor_free_and_draws_from_its_seed():
    pairs = [head_with_tumor(34), head_with_tumor(26), head_with_tumor(14)]
    images, maps = np.stack([pair[0] for pair in pairs]), np.stack([pair[1] for pair in pairs])
    glioma, no_tumor = np.array([1, 0, 0, 0], np.float32), np.array([0, 0, 1, 0], np.float32)
    targets = np.stack([glioma] * 3)
    always = AugmentConfig(healthy_mirror_probability=1.0)
    mirrored, mirrored_maps, mirrored_targets = healthy_mirror_batch(images, maps, targets, no_tumor, 5, always)
    assert [target.tolist() for target in mirrored_targets] == [no_tumor.tolist(), glioma.tolist(), no_tumor.tolist()]
    assert mirrored_maps[[0, 2]].max() == 0 and np.array_equal(mirrored_maps[1], maps[1])
    assert np.array_equal(mirrored[1], images[1]) and not np.array_equal(mirrored[0], images[0])
    assert np.array_equal(images, np.stack([pair[0] for pair in pairs]))  # the batch it was given is not changed
    never = healthy_mirror_batch(images, maps, targets, no_tumor, 5, AugmentConfig())
    assert all(np.array_equal(a, b) for a, b in zip(never, (images, maps, targets)))
    half = AugmentConfig(healthy_mirror_probability=0.5)
    draws = [healthy_mirror_batch(np.repeat(images[:1], 40, 0), np.repeat(maps[:1], 40, 0),
                                  np.repeat(targets[:1], 40, 0), no_tumor, seed, half)[2][:, 2] for seed in (1, 1, 2)]
    assert np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[0], draws[2])
    assert 8 < draws[0].sum() < 32
