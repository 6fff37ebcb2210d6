"""The deciding slice with its heat map as a DICOM Secondary Capture, beside a screening report in the PACS. In: a
``SeriesFinding``, its ``ScreeningModel``, the deciding image's header and the picture (the deciding slice as the
model saw it, the heat map blended over it: ``model.gradcam.overlay``, as the morning report draws it); out: a
Secondary Capture of the image's patient and study, the picture enlarged above a caption band that says
"AI-generated screening result, not a diagnosis", the model and the finding.

The caption names no patient, so the capture says ``BurnedInAnnotation`` NO; its ImageComments and series
description carry the same words. Its UIDs derive from the run date and the source series, as the report's do. Its
orientation is the deciding image's (the model's preprocessing crops and resizes but never turns a slice), so a
header that states none gives no capture.
"""

from __future__ import annotations

import cv2
import highdicom as hd
import numpy as np
import pydicom

from pipeline.dicomweb.findings import (CLASS_MEANINGS, DISCLAIMER, SOFTWARE, ScreeningModel, SeriesFinding,
                                        object_uids)
from pipeline.dicomweb.reports import (content_date_time, device_attributes, evidence_header, frame_geometry,
                                       referenced_frames)

CAPTURE_SERIES_NUMBER = 9902
CAPTURE_SIZE = 480  # the picture's side in the capture, in pixels
CAPTION_LINE_HEIGHT = 26
FONT = cv2.FONT_HERSHEY_SIMPLEX
AXIS_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))  # DICOM patient directions: -x/+x, -y/+y, -z/+z


class NoOrientationError(ValueError):
    """The deciding image states no orientation, so a capture of it could not say which way the patient lies."""


def heat_map_capture(finding: SeriesFinding, model: ScreeningModel, header: pydicom.Dataset,
                     picture: np.ndarray) -> hd.sc.SCImage:
    """The Secondary Capture of ``picture`` (RGB uint8, the deciding slice with its heat map)."""
    evidence = evidence_header(header)
    uids = object_uids("heat-map", finding.run_date, evidence.SeriesInstanceUID)
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=evidence, pixel_array=captioned(picture, caption(finding, model)),
        photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        patient_orientation=patient_orientation(evidence, finding.deciding_frame_index),
        series_instance_uid=uids.series, series_number=CAPTURE_SERIES_NUMBER, sop_instance_uid=uids.instance,
        instance_number=1, manufacturer=SOFTWARE, series_description=DISCLAIMER,
        **device_attributes(model), **content_date_time(finding.scored_at))
    capture.BurnedInAnnotation = "NO"
    capture.ImageComments = " ".join(caption(finding, model))
    capture.DerivationDescription = "the deciding slice as the model saw it, with the heat map of its tumor score"
    capture.SourceImageSequence = [source_image(evidence, finding.deciding_frame_index)]
    return capture


def caption(finding: SeriesFinding, model: ScreeningModel) -> list[str]:
    verdict = "Tumor suspected" if finding.flagged else "No tumor suspected"
    return [f"{DISCLAIMER}.",
            f"{verdict}: tumor probability {finding.tumor_probability:.2f}, most likely "
            f"{CLASS_MEANINGS[finding.predicted_class].lower()}.",
            f"Model {model.version}, flagged at {model.operating_point:.2f} or above."]


def captioned(picture: np.ndarray, lines: list[str]) -> np.ndarray:
    """The picture enlarged to ``CAPTURE_SIZE`` square above a black band holding ``lines`` in white."""
    if picture.ndim != 3 or picture.shape[2] != 3 or picture.dtype != np.uint8:
        raise ValueError(f"the heat-map picture is an RGB uint8 image (rows, columns, 3), not {picture.dtype} "
                         f"{picture.shape}")
    enlarged = cv2.resize(picture, (CAPTURE_SIZE, CAPTURE_SIZE), interpolation=cv2.INTER_LINEAR)
    band = np.zeros((CAPTION_LINE_HEIGHT * len(lines) + 8, CAPTURE_SIZE, 3), np.uint8)
    for number, line in enumerate(lines):
        scale = min(0.5, 0.5 * (CAPTURE_SIZE - 16) / cv2.getTextSize(line, FONT, 0.5, 1)[0][0])
        cv2.putText(band, line, (8, CAPTION_LINE_HEIGHT * (number + 1)), FONT, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return np.ascontiguousarray(np.vstack([enlarged, band]))


def patient_orientation(header: pydicom.Dataset, frame_index: int) -> tuple[str, str]:
    """The patient directions of the deciding frame's rows and columns (``L``, ``P``… the dominant axis of each)."""
    geometry = frame_geometry(header, frame_index)
    if geometry is None:
        raise NoOrientationError("the deciding image states no orientation (ImageOrientationPatient), so its heat-map "
                         "capture could not say which way the patient lies")
    cosines = geometry["ImageOrientationPatient"]
    return direction(cosines[:3]), direction(cosines[3:])


def direction(cosines: list[float]) -> str:
    axis = int(np.argmax(np.abs(cosines)))
    return AXIS_LETTERS[axis][cosines[axis] > 0]


def source_image(header: pydicom.Dataset, frame_index: int) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = header.SOPClassUID, header.SOPInstanceUID
    frames = referenced_frames(header, frame_index)
    if frames:
        item.ReferencedFrameNumber = frames
    return item
