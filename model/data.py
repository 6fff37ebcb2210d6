"""Labelled training data: folder-per-class image sets (local or S3) read into a preprocessed Ray Dataset.

In: a root whose sub-folders are named after the classes (``glioma/``, ``meningioma/``, ``notumor/``,
``pituitary/``, and optionally ``tumor/`` for tumors of unknown type), plus optional extra folders whose every
image is a tumor of unknown type. Files are JPEG, PNG or DICOM and are read exactly as the scoring pipeline reads
them (``model.decode``: the same limits, header checks and DICOM handling). Out: a Ray Dataset with one row per
image (per frame of a multi-frame DICOM, its URI suffixed ``#frame=N``) holding its URI, label, target mask,
preprocessed uint8 image, near-duplicate thumbnail and tumor map (where in the model input the tumor is, where the
data says: a segmentation mask carried into the input's geometry, or none at all for a tumor-free image). Problems
in the data (an unknown class folder, an empty class folder, an unreadable image or mask) raise
:class:`DatasetError` with the offending paths and error codes, before any training.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import pathlib
import posixpath

import numpy as np
import ray

from infra import storage
from model.decode import DICOM_EXTENSIONS, DecodeError, DecodeLimits, decode_file
from model.errors import ErrorCode
from model.dedup import THUMBNAIL_SIDE, thumbnail
from model.labels import CLASS_NAMES, NO_TUMOR, TRAINING_LABELS, TUMOR_UNKNOWN_TYPE, target_mask
from model.preprocessing import PreprocessConfig, head_crop_box, preprocess_image, to_model_square

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", *DICOM_EXTENSIONS)
CACHE_FORMAT = 2  # bump when a cached row's columns or meaning change
CACHE_COMPLETE = "_COMPLETE"  # written last: a cache without it (a run killed while writing) is rebuilt
DEFAULT_CACHE = str(pathlib.Path("~/.cache/mri-screen/preprocessed").expanduser())  # the jobs' and tools' --cache

logger = logging.getLogger(__name__)

URI = "uri"
LABEL = "label"
TARGET = "target"
IMAGE = "image"
THUMBNAIL = "thumbnail"
ERROR = "error"
MASK = "mask"  # a listed image's mask URI ("" for none), read with the image
WEIGHT = "weight"  # a training image's draw weight (model.sources.balanced_weights), when sources are balanced
TUMOR_MAP = "tumor_map"  # uint8, the input's shape: 255 where the tumor is (all 0 for a tumor-free image)
MAP_KNOWN = "tumor_map_known"  # whether TUMOR_MAP is known: a mask came with the image, or it is tumor-free


class DatasetError(ValueError):
    """The labelled data set cannot be used as it is; the message says which files or folders and why."""


@dataclasses.dataclass(frozen=True)
class LabelledImage:
    uri: str
    label: str
    size: int = 0  # bytes and modification time, when listed: what the preprocessed-image cache is keyed on
    modified: float = 0.0
    source: str = ""  # the data set (and, for another hospital's slices, the site) the image came from
    sequence: str = ""  # the MRI sequence, where the data names it (a sequence sub-folder)
    patient: str = ""  # the patient, where known: a patient's images stay on one side of a split
    mask: str = ""  # the URI of the image's tumor segmentation mask, where the data has one (``mask`` folders)

    @property
    def file(self) -> tuple[str, str, int, float, str]:
        """What the image's preprocessed row depends on (its descriptive fields do not change the pixels)."""
        return self.uri, self.label, self.size, self.modified, self.mask


def is_image_file(uri: str) -> bool:
    return uri.lower().endswith(IMAGE_EXTENSIONS)


MASK_FOLDER = "mask"  # a sub-folder of segmentation masks beside a class's images: never images to classify


def list_class_folder(folder: str, label: str) -> list[LabelledImage]:
    """Every image file under one class folder (sub-folders included, ``mask`` folders left out); raises
    DatasetError when there is none."""
    images = [LabelledImage(uri, label, size, modified, source=source_name(folder))
              for uri, size, modified in storage.list_file_versions(folder)
              if is_image_file(uri) and MASK_FOLDER not in (subfolders(folder, uri) or [])]
    if not images:
        raise DatasetError(f"class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return images


def subfolders(folder: str, uri: str) -> list[str] | None:
    """The folders between ``folder`` and the file ``uri`` below it (``glioma/flair/a.jpg`` under ``glioma``:
    ``["flair"]``), ``folder`` written as the listing writes paths (a local one absolute); None when ``uri`` is not
    below it."""
    prefix = (folder if storage.is_s3(folder) else os.path.abspath(os.path.expanduser(folder))).rstrip("/") + "/"
    return uri[len(prefix):].split("/")[:-1] if uri.startswith(prefix) else None


def list_labelled_images(root: str, tumor_roots: tuple[str, ...] = (),
                         every_class: bool = True) -> list[LabelledImage]:
    """All labelled images of a folder-per-class root plus unknown-type tumor folders. With ``every_class`` False
    (evaluation), a root may hold only some of the classes (another hospital's glioma and tumor-free slices)."""
    if not storage.is_dir(root):
        raise DatasetError(f"labelled data folder {root} does not exist or is not a folder")
    folders = storage.list_dirs(root)
    unknown = [folder for folder in folders if posixpath.basename(folder.rstrip("/")) not in TRAINING_LABELS]
    if unknown:
        raise DatasetError(f"unknown label folder(s) {', '.join(unknown)}: expected {', '.join(TRAINING_LABELS)}")
    present = {posixpath.basename(folder.rstrip("/")): folder for folder in folders}
    missing = [name for name in CLASS_NAMES if name not in present]
    if missing and (every_class or len(missing) == len(CLASS_NAMES)):
        raise DatasetError(f"{root} has no folder for class(es) {', '.join(missing)}")
    images = [dataclasses.replace(image, source=source_name(root))
              for name, folder in sorted(present.items()) for image in list_class_folder(folder, name)]
    for tumor_root in tumor_roots:
        images.extend(list_class_folder(tumor_root, TUMOR_UNKNOWN_TYPE))
    return images


def source_name(folder: str) -> str:
    """A data set's name in per-source figures: its folder's name, with the parent's for the generic names data sets
    use inside (``brain-tumor-mri/Training``, ``br35h-tumor/yes``)."""
    parts = folder.rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) > 1 else parts[-1]


SITE_TABLE = "slices.csv"  # optional, in a site folder: columns patient and site (further columns are ignored)


def list_site_images(root: str) -> list[LabelledImage]:
    """Labelled slices from other hospitals, laid out ``<class>/<sequence>/<patient>_<slice>.<ext>``: some classes
    only, a sequence folder per sequence (images directly in a class folder have no sequence), ``mask`` folders left
    out. Each image carries its patient (the file name up to its last ``_``), so a split keeps a patient's slices
    and sequences together, its source: ``<root name>/<site>`` where the folder's ``slices.csv`` names the
    patient's site, else the root's name, and its tumor mask where its class folder has one of the same name in
    ``mask/`` (``glioma/mask/<patient>_<slice>.png``, shared by the slice's sequences)."""
    images = list_labelled_images(root, every_class=False)
    sites = patient_sites(root)
    masks = mask_files(root, {image.label for image in images})
    name = source_name(root).split("/")[-1]
    described = []
    for image in images:
        below = subfolders(storage.join(root, image.label), image.uri) or []
        stem = posixpath.splitext(posixpath.basename(image.uri))[0]
        patient = stem.rsplit("_", 1)[0] if "_" in stem else stem
        site = sites.get(patient)
        described.append(dataclasses.replace(image, source=f"{name}/{site}" if site else name,
                                             sequence="/".join(below), patient=patient,
                                             mask=masks.get((image.label, stem), "")))
    return described


def mask_files(root: str, labels: set[str]) -> dict[tuple[str, str], str]:
    """(class, file name without extension) -> URI of every mask in the classes' ``mask`` folders."""
    masks = {}
    for label in sorted(labels):
        folder = storage.join(root, label, MASK_FOLDER)
        if storage.is_dir(folder):
            for uri, _, _ in storage.list_file_versions(folder):
                if is_image_file(uri):
                    masks[(label, posixpath.splitext(posixpath.basename(uri))[0])] = uri
    return masks


def names_site(source: str, site: str) -> bool:
    """Whether ``site`` names the source of site slices ``source``: the whole name (``lgg-glioma/HT``) or its site
    part (``HT``)."""
    return site in (source, source.rsplit("/", 1)[-1])


def patient_sites(root: str) -> dict[str, str]:
    """The site of each patient named in the folder's ``slices.csv``, if it has one."""
    table = storage.join(root, SITE_TABLE)
    if not storage.exists(table):
        return {}
    rows = csv.DictReader(io.StringIO(storage.read_bytes(table).decode("utf-8")))
    if not {"patient", "site"} <= set(rows.fieldnames or ()):
        raise DatasetError(f"{table} needs the columns patient and site, it has {rows.fieldnames}")
    return {row["patient"]: row["site"] for row in rows}


def list_training_images(data: str, tumor_data: tuple[str, ...] = (),
                         site_data: tuple[str, ...] = ()) -> list[LabelledImage]:
    """Everything one retraining reads: the folder-per-class root, unknown-type tumor folders, other hospitals'
    slices. A file two of them list (a tumor folder given that is the root's own ``tumor`` folder, say) would be
    read twice, under two sources: refused."""
    images = [*list_labelled_images(data, tumor_data),
              *(image for root in site_data for image in list_site_images(root))]
    twice = [uri for uri, count in collections.Counter(image.uri for image in images).items() if count > 1]
    if twice:
        raise DatasetError(f"{len(twice)} file(s) listed by two of the labelled folders, {twice[0]} first: a folder "
                           f"given is inside another (the --data folder's own tumor folder is read already); give "
                           f"each folder once")
    return images


def frame_uri(uri: str, index: int, frames: int) -> str:
    return uri if frames == 1 else f"{uri}#frame={index}"


def decoded_frames(uri: str, limits: DecodeLimits) -> list[np.ndarray]:
    return decode_file(storage.read_bytes(uri, max_bytes=limits.max_file_bytes), uri, limits).frames


def tumor_map(frame: np.ndarray, label: str, mask: np.ndarray | None, config: PreprocessConfig
              ) -> tuple[np.ndarray, bool]:
    """(TUMOR_MAP, MAP_KNOWN) of one decoded frame: its mask cropped, squared and resized as ``preprocess_image``
    treats the frame; empty and known for a tumor-free image; empty and unknown for a tumor without a mask."""
    side = config.image_size
    if mask is None:
        return np.zeros((side, side), np.uint8), label == NO_TUMOR
    if mask.shape[:2] != frame.shape[:2]:
        raise ValueError(f"its mask is {mask.shape[1]}x{mask.shape[0]} pixels, the image "
                         f"{frame.shape[1]}x{frame.shape[0]}")
    plane = mask if mask.ndim == 2 else mask[..., 0]
    inside = plane > plane.max() / 2
    moved = to_model_square(inside.astype(np.uint8) * 255, head_crop_box(frame, config), side)
    return np.where(moved >= 128, 255, 0).astype(np.uint8), True


def labelled_rows(uri: str, label: str, config: PreprocessConfig, limits: DecodeLimits,
                  mask_uri: str = "") -> list[dict]:
    """One labelled file (and its tumor mask, if it has one) -> a row per frame (or one row whose ``error`` names
    the file and the problem)."""
    try:
        frames = decoded_frames(uri, limits)
        mask = decoded_frames(mask_uri, limits)[0] if mask_uri else None
        rows = []
        for index, frame in enumerate(frames):
            where, known = tumor_map(frame, label, mask, config)
            rows.append({URI: frame_uri(uri, index, len(frames)), LABEL: label, IMAGE: preprocess_image(frame, config),
                         THUMBNAIL: thumbnail(frame), TUMOR_MAP: where, MAP_KNOWN: known, ERROR: ""})
        return rows
    except DecodeError as error:
        problem = f"{error.code}: {error}"
    except (ValueError, ArithmeticError, storage.StorageError) as error:
        problem = str(error)
    empty = np.zeros((config.image_size,) * 2, np.uint8)
    return [{URI: uri, LABEL: label, IMAGE: empty, THUMBNAIL: np.zeros(THUMBNAIL_SIDE * THUMBNAIL_SIDE, np.float32),
             TUMOR_MAP: empty, MAP_KNOWN: False, ERROR: f"{uri}: {problem}"}]


def load_labelled_batch(batch: dict[str, np.ndarray], config: PreprocessConfig,
                        limits: DecodeLimits = DecodeLimits()) -> dict[str, np.ndarray]:
    """Ray Data function: read, decode and preprocess a batch of labelled files (with their masks, where the batch
    has a ``mask`` column), recording errors per row."""
    masks = batch.get(MASK, [""] * len(batch[URI]))
    rows = [row for uri, label, mask in zip(batch[URI], batch[LABEL], masks)
            for row in labelled_rows(str(uri), str(label), config, limits, str(mask))]
    return {URI: np.array([row[URI] for row in rows]), LABEL: np.array([row[LABEL] for row in rows]),
            TARGET: np.stack([target_mask(row[LABEL]) for row in rows]),
            IMAGE: np.stack([row[IMAGE] for row in rows]), THUMBNAIL: np.stack([row[THUMBNAIL] for row in rows]),
            TUMOR_MAP: np.stack([row[TUMOR_MAP] for row in rows]),
            MAP_KNOWN: np.array([row[MAP_KNOWN] for row in rows]),
            ERROR: np.array([row[ERROR] for row in rows])}


def cache_key(images: list[LabelledImage], config: PreprocessConfig, limits: DecodeLimits) -> str:
    """A digest of everything the preprocessed images depend on: the files (name, label, size, modification
    time), the preprocessing parameters, the decode limits and the format of a cached row."""
    parts = {"format": CACHE_FORMAT, "preprocessing": config.to_dict(), "limits": dataclasses.asdict(limits),
             "images": sorted(image.file for image in images)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def load_labelled_dataset(images: list[LabelledImage], config: PreprocessConfig, batch_size: int = 64,
                          cache: str | None = None) -> ray.data.Dataset:
    """A materialized Ray Dataset of preprocessed labelled images; raises DatasetError naming unreadable files.

    With ``cache`` (a folder, local or S3), the preprocessed rows are kept there as Parquet under
    :func:`cache_key`, and a later run over the same files with the same parameters reads them back instead of
    decoding again."""
    if not cache:
        return decode_labelled_dataset(images, config, batch_size)
    cached = storage.join(cache, cache_key(images, config, DecodeLimits()))
    filesystem, path = storage.resolve(cached)
    if storage.exists(storage.join(cached, CACHE_COMPLETE)):
        logger.info("preprocessed images read from the cache at %s", cached)
        return ray.data.read_parquet(path, filesystem=filesystem).materialize()
    dataset = decode_labelled_dataset(images, config, batch_size)
    storage.delete_tree(cached)
    dataset.write_parquet(path, filesystem=filesystem)
    storage.write_text(storage.join(cached, CACHE_COMPLETE), json.dumps({"images": len(images)}))
    logger.info("preprocessed images cached at %s", cached)
    return dataset


def decoded_rows(images: list[LabelledImage], config: PreprocessConfig, batch_size: int) -> ray.data.Dataset:
    """Every labelled file read and preprocessed, a row per frame, errors recorded in ``ERROR``; materialized."""
    items = [{URI: image.uri, LABEL: image.label, MASK: image.mask} for image in images]
    blocks = max(1, min(64, len(items) // batch_size))
    return ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        load_labelled_batch, fn_kwargs={"config": config}, batch_size=batch_size, num_cpus=0.5).materialize()


def frame_of(uri: str) -> tuple[str, int]:
    """(file URI, frame index) of a row's URI (``frame_uri``)."""
    file, _, frame = str(uri).partition("#frame=")
    return file, int(frame or 0)


def error_code(uri: str, error: str) -> str:
    """The error code of a row's ``ERROR`` (``<uri>: <code>: <message>`` from the decoder), else
    ``unreadable_file``: a code names the problem without the file's path."""
    code = error[len(uri) + 2:].split(":", 1)[0]
    return code if code in {member.value for member in ErrorCode} else ErrorCode.UNREADABLE_FILE.value


def load_frames(images: list[tuple[LabelledImage, int]], config: PreprocessConfig,
                batch_size: int = 64) -> tuple[ray.data.Dataset, dict[str, str]]:
    """Chosen frames of labelled files (each image with the frame to keep), read and preprocessed as
    :func:`decode_labelled_dataset` reads them, and the files that could not be read (URI -> error code): those are
    left out, not a reason to stop."""
    wanted = {(image.uri, frame, image.label) for image, frame in images}
    dataset = decoded_rows(list(dict.fromkeys(image for image, _ in images)), config, batch_size)
    failed = {str(row[URI]): error_code(str(row[URI]), str(row[ERROR]))
              for row in dataset.filter(lambda row: row[ERROR] != "").select_columns([URI, ERROR]).take_all()}
    kept = dataset.filter(lambda row: row[ERROR] == "" and (*frame_of(row[URI]), str(row[LABEL])) in wanted)
    return kept.drop_columns([ERROR]).materialize(), failed


def decode_labelled_dataset(images: list[LabelledImage], config: PreprocessConfig,
                            batch_size: int = 64) -> ray.data.Dataset:
    """A materialized Ray Dataset of preprocessed labelled images; raises DatasetError naming unreadable files."""
    dataset = decoded_rows(images, config, batch_size)
    errors = [row[ERROR] for row in dataset.filter(lambda row: row[ERROR] != "").select_columns([ERROR]).take(20)]
    if errors:
        raise DatasetError("unreadable image(s) in the labelled data:\n  " + "\n  ".join(errors))
    return dataset.drop_columns([ERROR]).materialize()
