"""Labelled training data: folder-per-class image sets (local or S3) read into a preprocessed Ray Dataset.

In: a root whose sub-folders are named after the classes (``glioma/``, ``meningioma/``, ``notumor/``,
``pituitary/``, and optionally ``tumor/`` for tumors of unknown type), plus optional extra folders whose every
image is a tumor of unknown type. Out: a Ray Dataset with one row per image holding its URI, label, target mask,
preprocessed uint8 image and near-duplicate thumbnail. Problems in the data (an unknown class folder, an empty
class folder, an unreadable image) raise :class:`DatasetError` with the offending paths, before any training.
"""

from __future__ import annotations

import dataclasses
import posixpath

import cv2
import numpy as np
import ray

from infra import storage
from model.dedup import THUMBNAIL_SIDE, thumbnail
from model.labels import CLASS_NAMES, TRAINING_LABELS, TUMOR_UNKNOWN_TYPE, target_mask
from model.preprocessing import PreprocessConfig, preprocess_image, to_grey

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

URI = "uri"
LABEL = "label"
TARGET = "target"
IMAGE = "image"
THUMBNAIL = "thumbnail"
ERROR = "error"


class DatasetError(ValueError):
    """The labelled data set cannot be used as it is; the message says which files or folders and why."""


@dataclasses.dataclass(frozen=True)
class LabelledImage:
    uri: str
    label: str


def is_image_file(uri: str) -> bool:
    return uri.lower().endswith(IMAGE_EXTENSIONS)


def list_class_folder(folder: str, label: str) -> list[LabelledImage]:
    """Every image file under one class folder; raises DatasetError when there is none."""
    images = [LabelledImage(uri, label) for uri in storage.list_files(folder) if is_image_file(uri)]
    if not images:
        raise DatasetError(f"class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return images


def list_labelled_images(root: str, tumor_roots: tuple[str, ...] = ()) -> list[LabelledImage]:
    """All labelled images of a folder-per-class root plus unknown-type tumor folders."""
    if not storage.is_dir(root):
        raise DatasetError(f"labelled data folder {root} does not exist or is not a folder")
    folders = storage.list_dirs(root)
    unknown = [folder for folder in folders if posixpath.basename(folder.rstrip("/")) not in TRAINING_LABELS]
    if unknown:
        raise DatasetError(f"unknown label folder(s) {', '.join(unknown)}: expected {', '.join(TRAINING_LABELS)}")
    present = {posixpath.basename(folder.rstrip("/")): folder for folder in folders}
    missing = [name for name in CLASS_NAMES if name not in present]
    if missing:
        raise DatasetError(f"{root} has no folder for class(es) {', '.join(missing)}")
    images = [image for name, folder in sorted(present.items()) for image in list_class_folder(folder, name)]
    for tumor_root in tumor_roots:
        images.extend(list_class_folder(tumor_root, TUMOR_UNKNOWN_TYPE))
    return images


def decode_raster(data: bytes) -> np.ndarray:
    """Decode JPEG/PNG/BMP/TIFF bytes with OpenCV; raises ValueError when the bytes are not a readable image."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if image is None:
        raise ValueError("not a readable JPEG/PNG/BMP/TIFF image")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return image


def load_labelled_batch(batch: dict[str, np.ndarray], config: PreprocessConfig) -> dict[str, np.ndarray]:
    """Ray Data function: read, decode and preprocess a batch of labelled images, recording errors per row."""
    side = config.image_size
    size = len(batch[URI])
    images = np.zeros((size, side, side), dtype=np.uint8)
    thumbnails = np.zeros((size, THUMBNAIL_SIDE * THUMBNAIL_SIDE), dtype=np.float32)
    errors = [""] * size
    for row, uri in enumerate(batch[URI]):
        try:
            grey = to_grey(decode_raster(storage.read_bytes(str(uri))))
            images[row] = preprocess_image(grey, config)
            thumbnails[row] = thumbnail(grey)
        except (ValueError, storage.StorageError, cv2.error) as error:
            errors[row] = f"{uri}: {error}"
    targets = np.stack([target_mask(str(label)) for label in batch[LABEL]])
    return {URI: batch[URI], LABEL: batch[LABEL], TARGET: targets, IMAGE: images,
            THUMBNAIL: thumbnails, ERROR: np.array(errors)}


def load_labelled_dataset(images: list[LabelledImage], config: PreprocessConfig,
                          batch_size: int = 64) -> ray.data.Dataset:
    """A materialized Ray Dataset of preprocessed labelled images; raises DatasetError naming unreadable files."""
    items = [{URI: image.uri, LABEL: image.label} for image in images]
    blocks = max(1, min(64, len(items) // batch_size))
    dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        load_labelled_batch, fn_kwargs={"config": config}, batch_size=batch_size, num_cpus=0.5).materialize()
    errors = [row[ERROR] for row in dataset.filter(lambda row: row[ERROR] != "").select_columns([ERROR]).take(20)]
    if errors:
        raise DatasetError("unreadable image(s) in the labelled data:\n  " + "\n  ".join(errors))
    return dataset.drop_columns([ERROR])
