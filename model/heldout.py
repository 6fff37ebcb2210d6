"""Image sets a faster graph is judged on: MRI and non-MRI it was not calibrated on, as the model's inputs.

``model.quantize`` calibrates an int8 graph on training images; ``model.agreement``'s rule then asks it to answer as
float32 does on each of these sets, none of which it saw:

- contrast, gamma and noise variants of the validation images (other scanners' intensity curves and noise),
- the sample archive (DICOM and JPEG/PNG slices), when the checkout has it,
- every image object pydicom ships that is not MR (CT, ultrasound, radiographs, secondary captures...),
- any folders of MRI named by the caller (another hospital's slices, another sequence), each a set of its own,
  up to ``FOLDER_IMAGES`` images each, drawn at random with a fixed seed, listed as a labelled class folder is
  (``model.data``: local or S3, sub-folders included, ``mask`` folders left out).

No TensorFlow here; decoding and preprocessing are the scoring job's own (``model.decode``,
``model.preprocessing``).
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np

from infra import storage
from model.data import DatasetError, list_class_folder
from model.decode import DecodeError, decode_file
from model.preprocessing import PreprocessConfig, preprocess_image

FOLDER_IMAGES = 400
FRAMES_PER_FILE = 3
SAMPLE_ARCHIVE = pathlib.Path(__file__).resolve().parents[1] / "samples" / "archive"


def preprocessed(paths: list, config: PreprocessConfig, frames: int = FRAMES_PER_FILE) -> np.ndarray:
    """Up to ``frames`` frames of each decodable file (paths or URIs), as model inputs; a file that cannot be read
    or decoded is left out (these sets measure agreement, not decoding)."""
    images = []
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                decoded = decode_file(storage.read_bytes(str(path)), str(path))
            images += [preprocess_image(frame, config) for frame in decoded.frames[:frames]]
        except (DecodeError, ValueError, ArithmeticError, storage.StorageError):
            continue
    return np.stack(images) if images else np.zeros((0, config.image_size, config.image_size), np.uint8)


def pydicom_non_mr(config: PreprocessConfig) -> np.ndarray:
    """Every image object pydicom ships, MR left out (some of those show a head)."""
    import pydicom
    from pydicom.data import get_testdata_files

    paths = []
    for name in get_testdata_files():
        try:
            modality = pydicom.dcmread(name, stop_before_pixels=True, force=True).get("Modality")
        except Exception:  # not every shipped file parses
            continue
        if modality != "MR":
            paths.append(pathlib.Path(name))
    return preprocessed(paths, config)


def folder_images(folder: str, config: PreprocessConfig, limit: int = FOLDER_IMAGES, seed: int = 0) -> np.ndarray:
    """Up to ``limit`` image files of ``folder``, drawn at random with ``seed``, one frame each (none for a folder
    without images: an empty set is left out)."""
    try:
        uris = [image.uri for image in list_class_folder(folder, "held-out")]  # the label plays no part here
    except DatasetError:
        return np.zeros((0, config.image_size, config.image_size), np.uint8)
    chosen = np.random.default_rng(seed).choice(len(uris), min(limit, len(uris)), replace=False)
    return preprocessed([uris[index] for index in sorted(chosen)], config, frames=1)


def variants(images: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Contrast, gamma and noise variants of ``images`` (uint8 model inputs), one of each per image."""
    rng = np.random.default_rng(seed)
    shape = (len(images), 1, 1)
    scaled = images.astype(np.float32) / 255.0
    return {"validation, gamma 0.5-2": to_uint8(255.0 * scaled ** rng.uniform(0.5, 2.0, shape)),
            "validation, contrast 0.5-1.6": to_uint8(128.0 + (images - 128.0) * rng.uniform(0.5, 1.6, shape)),
            "validation, noise sigma 12": to_uint8(images + rng.normal(0.0, 12.0, images.shape))}


def to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def held_out_sets(config: PreprocessConfig, validation_images: np.ndarray,
                  folders: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Every set above, by name (empty sets left out)."""
    sets = variants(validation_images)
    if SAMPLE_ARCHIVE.is_dir():
        sets["sample archive"] = preprocessed(sorted(p for p in SAMPLE_ARCHIVE.rglob("*") if p.is_file()), config)
    sets["pydicom non-MR images"] = pydicom_non_mr(config)
    for name, folder in (folders or {}).items():
        sets[name] = folder_images(folder, config)
    return {name: images for name, images in sets.items() if len(images)}
