"""Pictures for the morning report: a flagged case's slices re-read from their source URIs (found again through the
pseudonym key when their folder names were pseudonymised), decoded and preprocessed as scoring did, drawn as PNG
data URIs (thumbnails in slice order, the deciding slice enlarged) and, when the model that scored the run is still
where the run took it from, the deciding slices' heat maps (``model.gradcam``; TensorFlow loads only in
``heat_map_overlays``, which the job runs in a Ray worker, and the model's networks load without the ensemble's
graph), captioned with how often the model's heat maps were measured to point at the tumor. In: cases built from the
committed tables' rows, the model's preprocessing; out: the same cases with their pictures, None where a slice can
no longer be read, or ``WITHHELD`` where its DICOM file may carry burned-in text that identifies the patient
(``model.decode.burned_in_text``): those pixels are scored but never drawn, nor explained by a heat map. Log lines
name a file by its reference, never by its path.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import time

import cv2
import numpy as np

from typing import Callable

from infra import storage
from model import registry
from model.decode import DecodeError, DecodeLimits, decode_file
from model.preprocessing import PreprocessConfig, preprocess_image
from pipeline import schema as col
from pipeline.sources.listing import read_listed
from pipeline.sources.pacs import PacsOptions

logger = logging.getLogger(__name__)

MAX_THUMBNAILS = 40  # slices shown per series: a window around the deciding slice
THUMBNAIL_SIZE = 72
FILE_LABEL = "file_label"  # added to a row the report shows: the file's reference and name, never its folders
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
    set_aside: dict[int, str] = dataclasses.field(default_factory=dict)  # index -> why it took no part
    deciding_image: np.ndarray | None = None
    heat_map: str | None = None  # data URI of the heat map overlay
    heat_map_caption: str = ""  # what the heat map shows and how often its peak fell on a tumor (heat_map_caption)

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
    changed or vanished since the run. A slice whose file may carry burned-in text is ``WITHHELD``. ``locate`` turns
    a stored ``source_uri`` into the path to read (None: it cannot be found), ``name`` into what a log line may say
    of it (a file reference, never its folders). A PACS instance is retrieved again, reaching the PACS as ``pacs``
    says."""

    def __init__(self, preprocessing: PreprocessConfig, limits: DecodeLimits = DecodeLimits(),
                 locate: Callable[[str], str | None] = lambda uri: uri,
                 name: Callable[[str], str] = lambda uri: "a file", pacs: PacsOptions | None = None):
        self.preprocessing, self.limits, self.frames = preprocessing, limits, {}
        self.locate, self.name, self.pacs = locate, name, pacs

    def __call__(self, uri: str, frame_index: int) -> np.ndarray | str | None:
        if uri not in self.frames:
            self.frames = {uri: self.decoded_frames(uri)}
        frames = self.frames[uri]
        if isinstance(frames, str):
            return frames
        return preprocess_image(frames[frame_index], self.preprocessing) if frame_index < len(frames) else None

    def decoded_frames(self, uri: str) -> list[np.ndarray] | str:
        path = self.locate(uri)
        if path is None:
            logger.warning("report: %s cannot be shown: its pseudonymised folders were not found", self.name(uri))
            return []
        try:
            decoded = decode_file(read_listed(path, self.limits.max_file_bytes, self.pacs), path, self.limits)
        except (storage.StorageError, DecodeError) as error:
            logger.warning("report: %s cannot be shown (%s)", self.name(uri), type(error).__name__)
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


def heat_map_overlays(images: np.ndarray, info: registry.ModelInfo) -> list[np.ndarray]:
    """The heat map of the tumor score (``model.gradcam.tumor_heat_maps``) on each ``(S, S)`` uint8 slice, by the
    verified model ``info`` describes, blended over the slice (RGB)."""
    from model.gradcam import overlay, tumor_heat_maps  # TensorFlow: loaded only where heat maps are drawn

    maps = tumor_heat_maps(images, info)
    return [overlay(image, heat_map) for image, heat_map in zip(images, maps)]


def heat_map_caption(info: registry.ModelInfo) -> str:
    """What a heat map shows, and how often its peak fell inside the tumor on hand-outlined gliomas, as measured for
    this model (``tools.heatmap_study``); or that it was not measured."""
    shown = "Heat map: the area that most raised the tumor probability (red)"
    measured = info.metadata.get(registry.HEATMAP_LOCALISATION, {})
    overall = measured.get("overall") or {}
    if not overall.get("images") or overall.get("peak_in_tumor") is None:
        return f"{shown}. How often it lies on the tumor has not been measured for this model."
    tolerance = measured.get("tolerance_pixels", {})
    source = "TCGA-LGG, a hospital left out of the model's training" if measured.get("site") else "TCGA-LGG"
    return (f"{shown}. On {overall['images']} flagged glioma slices with hand-drawn tumor outlines ({source}) its "
            f"peak fell inside the outlined tumor on {percent(overall['peak_in_tumor'])}{by_chance(overall)}, and "
            f"within {tolerance.get('pixels', '?')} pixels of it (of {tolerance.get('image_size', '?')}) on "
            f"{percent(overall['peak_near_tumor'])}: a pointer to look at, not an outline of the tumor.")


def percent(share: float) -> str:
    return f"{100 * share:.0f}%"


def by_chance(overall: dict) -> str:
    """How often a peak placed at random in the head would have fallen inside the tumor, where it was measured."""
    chance = overall.get("peak_in_tumor_by_chance")
    return f" (a point at random in the head: {percent(chance)})" if chance is not None else ""


HeatMaps = Callable[[np.ndarray, registry.ModelInfo], list[np.ndarray]]


def draw_heat_maps(cases: list[Case], info: registry.ModelInfo, heat_maps: HeatMaps = heat_map_overlays) -> None:
    """Each case's deciding slice with its heat map blended over it; ``heat_maps`` draws them (here, or in a Ray
    worker so TensorFlow stays out of the job's driver)."""
    shown = [case for case in cases if case.deciding_image is not None]
    if not shown:
        return
    started = time.monotonic()
    logger.info("report: drawing %d heat map(s) (loads the model %s)", len(shown), info.version)
    overlays = heat_maps(np.stack([case.deciding_image for case in shown]), info)
    caption = heat_map_caption(info)
    for case, blended in zip(shown, overlays):
        case.heat_map, case.heat_map_caption = png_uri(blended), caption
    logger.info("report: %d heat map(s) drawn in %.1f s", len(shown), time.monotonic() - started)


def draw_pictures(cases: list[Case], preprocessing: PreprocessConfig, info: registry.ModelInfo | None,
                  reader: SliceReader | None = None, heat_maps: HeatMaps = heat_map_overlays) -> None:
    reader = reader or SliceReader(preprocessing)
    for case in cases:
        draw_thumbnails(case, reader)
    if info is not None:
        draw_heat_maps(cases, info, heat_maps)


def unfamiliar_thumbnails(rows: list[dict], preprocessing: PreprocessConfig,
                          reader: SliceReader | None = None) -> list[str | None]:
    reader = reader or SliceReader(preprocessing)
    return [thumbnail(reader(row[col.SOURCE_URI], row[col.FRAME_INDEX] or 0)) for row in rows]
