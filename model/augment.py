"""Training-time augmentation of preprocessed uint8 slices (numpy/OpenCV, run inside the training feed).

Geometry (rotation, zoom, flips) teaches orientation invariance; random intensity curves (each band of intensity,
roughly each tissue, moved on its own: another sequence's contrast), intensity jitter (gamma, contrast, brightness), a
smooth intensity bias field (a coil's uneven sensitivity), blur or sharpening, noise, resolution loss and JPEG
re-compression teach the model to ignore the look of one scanner or data set (the stacked transformations that
published cross-site work found to hold up on unseen scanners). Spectrum mixing gives a slice the coarse look of
another slice of its batch (which source-balanced sampling draws from other sources) while keeping its anatomy.
Healthy mirroring turns a slice whose tumor lies in one half of the head into a tumor-free slice of the same
scanner, sequence and level: its healthy half and that half's mirror image.
Every transform is drawn from the generator passed in, so an epoch's augmentation is reproducible from its seed.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    max_rotation_degrees: float = 15.0
    zoom_range: tuple[float, float] = (0.9, 1.15)
    horizontal_flip: float = 0.5
    vertical_flip: float = 0.1
    gamma_range: tuple[float, float] = (0.7, 1.4)
    contrast_range: tuple[float, float] = (0.75, 1.25)
    brightness_range: float = 20.0
    blur_probability: float = 0.25
    noise_probability: float = 0.3
    noise_sigma: float = 8.0
    downsample_probability: float = 0.25
    downsample_range: tuple[float, float] = (0.35, 0.8)
    bias_probability: float = 0.4
    bias_strength: float = 0.35  # the field multiplies intensities by 1 +- up to this much, varying smoothly
    sharpen_probability: float = 0.15
    jpeg_probability: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 95)
    curve_probability: float = 0.0  # a random intensity curve (random_curve): another sequence's tissue contrast
    curve_points: int = 5
    curve_reversal: float = 0.25  # of those, the share whose curve need not rise (tissues swap their order)
    spectrum_mix_probability: float = 0.0  # another slice's coarse look (mix_spectrum)
    spectrum_band: float = 0.04  # the low frequencies mixed: this share of the spectrum's width, around its centre
    spectrum_weight: tuple[float, float] = (0.2, 1.0)  # how much of the other slice's amplitude they take
    spectrum_floor: int = 12  # pixels this dark or darker (background, air) keep their value
    healthy_mirror_probability: float = 0.0  # a one-sided tumor's slice made tumor-free (healthy_mirror_batch)
    healthy_mirror_margin: float = 0.06  # the tumor must end this share of the width short of the midline
    head_floor: int = 20  # pixels brighter than this are head, when the midline is found


def random_affine(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig,
                  tumor_map: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """A random rotation, zoom and flips of the slice, and the same of its tumor map when one is given."""
    side = image.shape[0]
    angle = rng.uniform(-config.max_rotation_degrees, config.max_rotation_degrees)
    scale = rng.uniform(*config.zoom_range)
    matrix = cv2.getRotationMatrix2D((side / 2, side / 2), angle, scale)
    planes = [image] if tumor_map is None else [image, tumor_map]
    planes = [cv2.warpAffine(plane, matrix, (side, side), flags=cv2.INTER_LINEAR, borderValue=0) for plane in planes]
    if rng.random() < config.horizontal_flip:
        planes = [plane[:, ::-1] for plane in planes]
    if rng.random() < config.vertical_flip:
        planes = [plane[::-1, :] for plane in planes]
    return planes[0], (planes[1] if tumor_map is not None else None)


def random_intensity(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    values = image.astype(np.float32) / 255.0
    values = values ** rng.uniform(*config.gamma_range)
    values = (values - values.mean()) * rng.uniform(*config.contrast_range) + values.mean()
    values = values * 255.0 + rng.uniform(-config.brightness_range, config.brightness_range)
    return np.clip(values, 0, 255)


def random_curve(values: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Map the head's intensities through a random piecewise-linear curve (``curve_points`` knots between 0 and
    255): each band of intensity, and so roughly each tissue, gets its own brightness, as another sequence or
    scanner would give it. Most curves rise (the tissues keep their order); ``curve_reversal`` of them need not,
    so the model cannot rely on one contrast to see a lesion. The darkest band (background, air) stays dark."""
    knots = np.concatenate([[0.0], np.linspace(24.0, 255.0, config.curve_points)])
    targets = rng.uniform(24.0, 255.0, config.curve_points)
    if rng.random() >= config.curve_reversal:
        targets = np.sort(targets)
    return np.interp(values, knots, np.concatenate([[0.0], targets])).astype(np.float32)


def bias_field(side: int, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A smooth multiplicative field around 1: a coarse random grid (3x3 to 5x5) interpolated to the image."""
    cells = int(rng.integers(3, 6))
    coarse = rng.uniform(1.0 - strength, 1.0 + strength, (cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)


def jpeg_roundtrip(values: np.ndarray, quality: int) -> np.ndarray:
    encoded = cv2.imencode(".jpg", np.clip(values, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
    return cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE).astype(np.float32)


def random_degradation(values: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    side = values.shape[0]
    if rng.random() < config.bias_probability:
        values = values * bias_field(side, rng, config.bias_strength)
    if rng.random() < config.downsample_probability:
        small = max(8, int(side * rng.uniform(*config.downsample_range)))
        values = cv2.resize(cv2.resize(values, (small, small), interpolation=cv2.INTER_AREA),
                            (side, side), interpolation=cv2.INTER_LINEAR)
    if rng.random() < config.blur_probability:
        values = cv2.GaussianBlur(values, (0, 0), rng.uniform(0.5, 1.5))
    elif rng.random() < config.sharpen_probability:
        amount = rng.uniform(0.3, 1.0)
        values = values * (1 + amount) - cv2.GaussianBlur(values, (0, 0), rng.uniform(0.8, 1.5)) * amount
    if rng.random() < config.noise_probability:
        values = values + rng.normal(0.0, rng.uniform(1.0, config.noise_sigma), values.shape)
    if rng.random() < config.jpeg_probability:
        values = jpeg_roundtrip(values, int(rng.integers(*config.jpeg_quality, endpoint=True)))
    return values


def mix_spectrum(image: np.ndarray, other: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """``image`` with the low-frequency amplitudes of its Fourier spectrum moved toward ``other``'s, its phases kept.

    The phases hold where edges and structures lie (the anatomy, a lesion); the lowest frequencies' amplitudes hold
    the slice's coarse look: overall brightness and contrast, smooth shading, how bright each large region is, which
    differ between scanners, sequences and data sets (the Fourier domain adaptation of Yang and Soatto, CVPR 2020,
    used here as an augmentation). The background (``spectrum_floor`` or darker) keeps its values."""
    side = image.shape[0]
    band = max(1, int(round(side * config.spectrum_band / 2)))
    centre = side // 2
    window = (slice(centre - band, centre + band + 1),) * 2
    spectrum = np.fft.fftshift(np.fft.fft2(image.astype(np.float32)))
    amplitude, phase = np.abs(spectrum), np.angle(spectrum)
    weight = rng.uniform(*config.spectrum_weight)
    other_amplitude = np.abs(np.fft.fftshift(np.fft.fft2(other.astype(np.float32))))
    amplitude[window] = (1 - weight) * amplitude[window] + weight * other_amplitude[window]
    mixed = np.real(np.fft.ifft2(np.fft.ifftshift(amplitude * np.exp(1j * phase))))
    return np.where(image > config.spectrum_floor, mixed, image).astype(np.float32)


def augment_image(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig = AugmentConfig(),
                  tumor_map: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """One randomly transformed copy of a square uint8 slice, same shape and dtype, and its ``tumor_map`` (the slice's
    ``model.data.TUMOR_MAP``) moved as the slice was (only the geometry touches a map); None without one."""
    moved, moved_map = random_affine(image, rng, config, tumor_map)
    moved = np.ascontiguousarray(moved).astype(np.float32)
    if rng.random() < config.curve_probability:
        moved = random_curve(moved, rng, config)
    values = random_degradation(random_intensity(moved, rng, config).astype(np.float32), rng, config)
    return np.clip(values, 0, 255).astype(np.uint8), None if moved_map is None else np.ascontiguousarray(moved_map)


def augment_batch(images: np.ndarray, seed: int | None = None, config: AugmentConfig = AugmentConfig(),
                  maps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Augmented copies of a ``(n, S, S)`` uint8 batch, and of its tumor ``maps`` when given, each map moved as its
    slice (None without maps). The maps take no draws of their own: a batch augments alike with or without them.
    The training feed runs it through ``tf.numpy_function``."""
    rng = np.random.default_rng(seed)
    pairs = [augment_image(image, rng, config, None if maps is None else maps[index])
             for index, image in enumerate(images)]
    if not pairs:
        return images, maps
    augmented = np.stack([pair[0] for pair in pairs])
    if config.spectrum_mix_probability > 0 and len(images) > 1:  # drawn after the rest: off, a batch is as before
        for index in np.flatnonzero(rng.random(len(images)) < config.spectrum_mix_probability):
            other = (index + rng.integers(1, len(images))) % len(images)  # any other slice of the batch, as it came
            mixed = mix_spectrum(augmented[index], images[other], rng, config)
            augmented[index] = np.clip(mixed, 0, 255).astype(np.uint8)
    return augmented, None if maps is None else np.stack([pair[1] for pair in pairs])


def head_midline(image: np.ndarray, floor: int) -> int | None:
    """The column between the head's left and right edges (pixels brighter than ``floor``), None without a head."""
    columns = np.flatnonzero((image > floor).any(axis=0))
    return None if not len(columns) else int(round((columns[0] + columns[-1] + 1) / 2))


def healthy_mirror(image: np.ndarray, tumor_map: np.ndarray, config: AugmentConfig) -> np.ndarray | None:
    """The slice made tumor-free: the half of the head without the tumor, and in place of the other half its
    mirror image about the head's midline. None unless the tumor map lies wholly in one half, at least
    ``healthy_mirror_margin`` of the width short of the midline (a tumor's swelling reaches past its mask).

    The slices a model lacks are tumor-free ones through the middle and top of the head from scanners it trained
    on only through tumor patients; this makes them from those patients' tumor slices, at the same level. The input
    is the preprocessed slice, whose head the crop has centred, before any augmentation moves it."""
    middle = head_midline(image, config.head_floor)
    columns = np.flatnonzero(tumor_map.any(axis=0))
    if middle is None or not len(columns):
        return None
    side, margin = image.shape[1], int(round(config.healthy_mirror_margin * image.shape[1]))
    width, mirrored = min(middle, side - middle), image.copy()
    if columns[-1] < middle - margin:  # tumor on the left: the right half is kept
        mirrored[:, middle - width:middle] = image[:, middle:middle + width][:, ::-1]
        mirrored[:, :middle - width] = 0
    elif columns[0] >= middle + margin:  # tumor on the right: the left half is kept
        mirrored[:, middle:middle + width] = image[:, middle - width:middle][:, ::-1]
        mirrored[:, middle + width:] = 0
    else:
        return None
    return mirrored


def healthy_mirror_batch(images: np.ndarray, maps: np.ndarray, targets: np.ndarray, no_tumor: np.ndarray,
                         seed: int, config: AugmentConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``healthy_mirror_probability`` of the batch's slices whose tumor lies in one half made tumor-free
    (:func:`healthy_mirror`): the slice replaced, its map emptied, its target ``no_tumor``. Drawn from a generator
    of its own (from ``seed``), so the rest of the augmentation draws as it would without it."""
    rng = np.random.default_rng([seed, 1])
    images, maps, targets = images.copy(), maps.copy(), targets.copy()
    for index in np.flatnonzero(rng.random(len(images)) < config.healthy_mirror_probability):
        mirrored = healthy_mirror(images[index], maps[index], config)
        if mirrored is not None:
            images[index], maps[index], targets[index] = mirrored, 0, no_tumor
    return images, maps, targets
