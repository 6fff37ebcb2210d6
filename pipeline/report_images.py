"""Pictures for the morning report: a flagged case's slices re-read from their source URIs, decoded and
preprocessed as scoring did, drawn as PNG data URIs (thumbnails in slice order, the deciding slice enlarged) and,
when the model that scored the run is still where the run took it from, the deciding slice's Grad-CAM heat map
(``model.gradcam``; TensorFlow loads only here, and only when heat maps are drawn). In: cases built from the
committed tables' rows, the model's preprocessing; out: the same cases with their pictures, None where a slice can no
longer be read, or ``WITHHELD`` where its DICOM file may carry burned-in text that identifies the patient
(``model.decode.burned_in_text``): those pixels are scored but never drawn, nor explained by a heat map.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging

import cv2
import numpy as np

from infra import storage
from model import registry
from model.decode import DecodeError, DecodeLimits, decode_file
from model.preprocessing import PreprocessConfig, preprocess_image
from pipeline import schema as col

logger = logging.getLogger(__name__)

MAX_THUMBNAILS = 40  # slices shown per series: a window around the deciding slice
THUMBNAIL_SIZE = 72
WITHHELD = "withheld"  # in place of a picture: the file may carry burned-in text that identifies the patient
WITHHELD_NOTE = ("Pictures withheld: the DICOM file says its pixels carry burned-in text (or is a secondary capture "
                 "that does not say they do not), which may identify the patient. Open it in the viewer.")


@dataclasses.dataclass
class Case:
    """A flagged series, or a flagged image outside any series (one slice), with its pictures once drawn."""

    row: dict  # the series row with its deciding slice's probabilities, or the image's prediction row
    slices: list[tuple[str, int]]  # (source URI, frame index), in slice order
    slice_probabilities: list[float | None]
    deciding: int
    thumbnails: dict[int, str | None] = dataclasses.field(default_factory=dict)  # index -> data URI, WITHHELD
    deciding_image: np.ndarray | None = None
    heat_map: str | None = None  # data URI of the Grad-CAM overlay

    @property
    def withheld(self) -> bool:
        """Whether a shown slice's file may carry burned-in text, so its pictures are not drawn."""
        return WITHHELD in self.thumbnails.values()


def run_model(run: dict) -> tuple[registry.ModelInfo | None, str]:
    """The model that scored the run, where the run took it from (a model folder, or that version in a registry),
    checked by its weights' sha256; or None and a sentence saying why there are no heat maps."""
    source = json.loads(run.get(col.OPTIONS) or "{}").get("model") or registry.DEFAULT_MODEL
    for candidate in (source, storage.join(source, run[col.MODEL_VERSION] or "")):
        try:
            info = registry.load_model_info(candidate)
        except (registry.ModelError, storage.StorageError):
            continue
        if info.weights_sha256 == run[col.MODEL_SHA256]:
            return info, ""
    return None, (f"no heat maps: the model {run[col.MODEL_VERSION]} (weights sha256 "
                  f"{(run[col.MODEL_SHA256] or '')[:12]}) that scored this run is no longer at {source}")


class SliceReader:
    """Slices re-read from their source files, decoded and preprocessed as scoring did. The last file read stays
    decoded (a series' slices, a multi-frame object's frames, come in a row). An unreadable slice is None: the file
    changed or vanished since the run. A slice whose file may carry burned-in text is ``WITHHELD``."""

    def __init__(self, preprocessing: PreprocessConfig, limits: DecodeLimits = DecodeLimits()):
        self.preprocessing, self.limits, self.frames = preprocessing, limits, {}

    def __call__(self, uri: str, frame_index: int) -> np.ndarray | str | None:
        if uri not in self.frames:
            self.frames = {uri: self.decoded_frames(uri)}
        frames = self.frames[uri]
        if isinstance(frames, str):
            return frames
        return preprocess_image(frames[frame_index], self.preprocessing) if frame_index < len(frames) else None

    def decoded_frames(self, uri: str) -> list[np.ndarray] | str:
        try:
            decoded = decode_file(storage.read_bytes(uri, max_bytes=self.limits.max_file_bytes), uri, self.limits)
        except (storage.StorageError, DecodeError) as error:
            logger.warning("report: %s cannot be shown: %s", uri, error)
            return []
        return WITHHELD if decoded.header.get("BurnedInText") else decoded.frames


def png_uri(image: np.ndarray, size: int | None = None) -> str:
    """A grey or RGB uint8 image as a PNG data URI, resized to ``size`` square when given."""
    if size is not None:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    _, encoded = cv2.imencode(".png", image)
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def shown_slices(case: Case) -> range:
    """The window of at most ``MAX_THUMBNAILS`` slices around the deciding one."""
    count = len(case.slices)
    start = min(max(0, case.deciding - MAX_THUMBNAILS // 2), max(0, count - MAX_THUMBNAILS))
    return range(start, min(count, start + MAX_THUMBNAILS))


def thumbnail(image: np.ndarray | str | None) -> str | None:
    """A slice as the report draws it: a PNG data URI, ``WITHHELD``, or None (unreadable)."""
    return image if image is None or isinstance(image, str) else png_uri(image, THUMBNAIL_SIZE)


def draw_thumbnails(case: Case, reader: SliceReader) -> None:
    for index in shown_slices(case):
        image = reader(*case.slices[index])
        case.thumbnails[index] = thumbnail(image)
        if index == case.deciding and not isinstance(image, str):
            case.deciding_image = image


def draw_heat_maps(cases: list[Case], info: registry.ModelInfo) -> None:
    """Grad-CAM of the tumor score on each case's deciding slice, blended over it."""
    from model.gradcam import TUMOR, GradCam, overlay  # TensorFlow: loaded only where heat maps are drawn

    shown = [case for case in cases if case.deciding_image is not None]
    if not shown:
        return
    maps = GradCam.from_model_info(info, info.weights_sha256)(np.stack([case.deciding_image for case in shown]),
                                                               target=TUMOR)
    for case, heat_map in zip(shown, maps):
        case.heat_map = png_uri(overlay(case.deciding_image, heat_map))


def draw_pictures(cases: list[Case], preprocessing: PreprocessConfig, info: registry.ModelInfo | None) -> None:
    reader = SliceReader(preprocessing)
    for case in cases:
        draw_thumbnails(case, reader)
    if info is not None:
        draw_heat_maps(cases, info)


def unfamiliar_thumbnails(rows: list[dict], preprocessing: PreprocessConfig) -> list[str | None]:
    reader = SliceReader(preprocessing)
    return [thumbnail(reader(row[col.SOURCE_URI], row[col.FRAME_INDEX] or 0)) for row in rows]
