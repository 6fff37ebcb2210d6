"""Image preprocessing shared by training and scoring: any decoded slice in, a square uint8 model input out.

This is the only implementation. Training (``model.data``) and the scoring pipeline (``pipeline.preprocess``) both
call :func:`preprocess_image` with the :class:`PreprocessConfig` stored beside the model weights, so scoring cannot
drift from what the model saw. The steps remove cues of the source scanner or data set: grey conversion, a robust
per-image intensity normalisation, a crop to the head, padding to a square (aspect ratio kept), resizing, CLAHE
contrast enhancement and a light denoise.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of :func:`preprocess_image`; saved with every model."""

    image_size: int = 160
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    head_threshold: float = 0.08
    crop_margin: float = 0.04
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    denoise_kernel: int = 3

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "PreprocessConfig":
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def to_grey(image: np.ndarray) -> np.ndarray:
    """A 2-D float32 grey image from a 2-D grey, an HxWx1, an RGB or an RGBA array."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        image = cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]).astype(np.float32), cv2.COLOR_RGB2GRAY)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grey or RGB image, got an array of shape {image.shape}")
    return image.astype(np.float32, copy=False)


def normalize_intensity(grey: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Stretch the image's own low/high percentiles to 0..255 (uint8); a constant image becomes all zeros."""
    finite = np.nan_to_num(grey, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = np.percentile(finite, [config.low_percentile, config.high_percentile])
    if high - low < 1e-6:
        return np.zeros(finite.shape, dtype=np.uint8)
    scaled = (finite - low) * (255.0 / (high - low))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def bright_components(image: np.ndarray, config: PreprocessConfig) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, labels, stats) of the bright regions of a uint8 image (``cv2.connectedComponentsWithStats``; label 0
    is the background) after a light blur: where the head is looked for."""
    blurred = cv2.GaussianBlur(image, (5, 5), 0)
    mask = (blurred > config.head_threshold * 255).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return count, labels, stats


def head_bounding_box(image: np.ndarray, config: PreprocessConfig) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the largest bright region (the head), with a margin; whole image if none."""
    height, width = image.shape
    count, _, stats = bright_components(image, config)
    if count <= 1:
        return 0, height, 0, width
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    left, top, box_w, box_h = (int(v) for v in stats[largest, :4])
    if box_w * box_h < 0.05 * height * width:
        return 0, height, 0, width
    margin = int(round(config.crop_margin * max(box_w, box_h)))
    return (max(0, top - margin), min(height, top + box_h + margin),
            max(0, left - margin), min(width, left + box_w + margin))


def head_region(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Boolean mask of the head in a uint8 image: its largest bright region with the holes inside filled (dark
    ventricles, a dark tumor); all False when nothing is bright."""
    count, labels, stats = bright_components(image, config)
    if count <= 1:
        return np.zeros(image.shape, dtype=bool)
    largest = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    outside = np.pad(1 - largest, 1, constant_values=1)
    cv2.floodFill(outside, None, (0, 0), 2)
    return outside[1:-1, 1:-1] != 2


def head_crop_box(image: np.ndarray, config: PreprocessConfig) -> tuple[int, int, int, int]:
    """(top, bottom, left, right): the crop :func:`preprocess_image` takes of a decoded slice, to carry anything
    drawn on the slice (a tumor mask) into the model input's geometry with :func:`to_model_square`."""
    return head_bounding_box(normalize_intensity(to_grey(image), config), config)


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Pad with black on the short side so the aspect ratio survives the resize."""
    height, width = image.shape
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return cv2.copyMakeBorder(image, top, side - height - top, left, side - width - left,
                              cv2.BORDER_CONSTANT, value=0)


def to_model_square(plane: np.ndarray, box: tuple[int, int, int, int], side: int) -> np.ndarray:
    """A 2-D image cropped to ``box``, padded to a square and resized to ``side``: the geometry of a model input."""
    top, bottom, left, right = box
    square = pad_to_square(plane[top:bottom, left:right])
    interpolation = cv2.INTER_AREA if square.shape[0] > side else cv2.INTER_LINEAR
    return cv2.resize(square, (side, side), interpolation=interpolation)


def preprocess_image(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Decoded slice (any size, grey or RGB, any dtype) -> ``(image_size, image_size)`` uint8 model input."""
    grey = normalize_intensity(to_grey(image), config)
    resized = to_model_square(grey, head_bounding_box(grey, config), config.image_size)
    clahe = cv2.createCLAHE(clipLimit=config.clahe_clip_limit,
                            tileGridSize=(config.clahe_tile_grid, config.clahe_tile_grid))
    enhanced = clahe.apply(resized)
    if config.denoise_kernel > 1:
        enhanced = cv2.GaussianBlur(enhanced, (config.denoise_kernel, config.denoise_kernel), 0)
    return enhanced
