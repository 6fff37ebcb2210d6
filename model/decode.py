"""Decoding: one file's bytes in, one decoded grey frame per image (or one error) out; scoring and training alike.

DICOM goes through pydicom (every transfer syntax its installed plugins decode: RLE, JPEG, JPEG-LS, JPEG 2000,
deflated, big-endian, implicit VR), with the modality LUT (rescale slope/intercept), the VOI LUT or window, and
MONOCHROME1 inversion applied; multi-frame objects give one frame per row. JPEG and PNG go through OpenCV after
their header size is checked. Limits on bytes, pixels and frames keep one hostile file from exhausting a worker.
Failures raise :class:`DecodeError` carrying an :class:`model.errors.ErrorCode`. The scoring stages
(``pipeline.scoring.stages``) and the training data loader (``model.data``) both read files through :func:`decode_file`.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
import pydicom
import pydicom.errors
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from PIL import Image

import cv2

from model.errors import ErrorCode
from model.header_values import code_string, dicom_date
from model.preprocessing import to_grey

DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")
RASTER_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


@dataclasses.dataclass(frozen=True)
class DecodeLimits:
    max_file_bytes: int = 512 * 1024 * 1024
    max_pixels_per_frame: int = 4096 * 4096
    max_frames: int = 2048
    min_side: int = 16


class DecodeError(ValueError):
    """A file that cannot be turned into images; ``code`` says why."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code


@dataclasses.dataclass
class DecodedFile:
    """Frames of one file plus what its header says (identifiers still raw: pseudonymize before output)."""

    file_format: str
    frames: list[np.ndarray]
    header: dict = dataclasses.field(default_factory=dict)


def has_dicom_marker(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def sniff_format(data: bytes, uri: str) -> str:
    """'dicom', 'jpeg', 'png' or 'unknown' from the magic bytes, with the file name as a hint for raw DICOM."""
    if has_dicom_marker(data):
        return "dicom"
    if data.startswith(RASTER_MAGIC[0]):
        return "jpeg"
    if data.startswith(RASTER_MAGIC[1]):
        return "png"
    name = uri.rsplit("/", 1)[-1].lower()
    if name.endswith(DICOM_EXTENSIONS) or "." not in name:
        return "dicom"
    return "unknown"


def check_frame_size(rows: int, columns: int, frames: int, limits: DecodeLimits) -> None:
    if rows * columns > limits.max_pixels_per_frame:
        raise DecodeError(ErrorCode.IMAGE_TOO_LARGE, f"{columns}x{rows} pixels exceeds the limit of "
                                             f"{limits.max_pixels_per_frame} pixels per frame")
    if frames > limits.max_frames:
        raise DecodeError(ErrorCode.IMAGE_TOO_LARGE, f"{frames} frames exceeds the limit of {limits.max_frames}")
    if min(rows, columns) < limits.min_side:
        raise DecodeError(ErrorCode.IMAGE_TOO_SMALL, f"{columns}x{rows} pixels is below the minimum side of "
                                             f"{limits.min_side}")


def decode_file(data: bytes, uri: str, limits: DecodeLimits = DecodeLimits()) -> DecodedFile:
    """Decode one file's bytes; raises DecodeError with a specific code for anything unusable."""
    if len(data) == 0:
        raise DecodeError(ErrorCode.EMPTY_FILE, "the file is empty (0 bytes)")
    file_format = sniff_format(data, uri)
    if file_format == "dicom":
        return decode_dicom(data, limits)
    if file_format in ("jpeg", "png"):
        return DecodedFile(file_format, [decode_raster_checked(data, file_format, limits)])
    raise DecodeError(ErrorCode.UNSUPPORTED_FORMAT, "not a DICOM, JPEG or PNG file (unrecognised content)")


def decode_raster_checked(data: bytes, file_format: str, limits: DecodeLimits) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Image.DecompressionBombError as error:
        raise DecodeError(ErrorCode.IMAGE_TOO_LARGE,
                          f"{file_format.upper()} header declares too many pixels") from error
    except Exception as error:  # Pillow raises many types for a broken header
        raise DecodeError(ErrorCode.IMAGE_DECODE_FAILED, f"{file_format.upper()} header unreadable: {error}") from error
    check_frame_size(height, width, 1, limits)
    try:
        image = decode_raster(data)
    except ValueError as error:
        raise DecodeError(ErrorCode.IMAGE_DECODE_FAILED, f"corrupt or truncated {file_format.upper()}") from error
    return grey_frame(image)


def decode_raster(data: bytes) -> np.ndarray:
    """Decode JPEG/PNG bytes with OpenCV (grey, RGB or RGBA); raises ValueError when they are not a readable image."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if image is None:
        raise ValueError("not a readable JPEG/PNG image")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return image


def grey_frame(image: np.ndarray) -> np.ndarray:
    """A 2-D float32 frame from a grey or RGB(A) array."""
    try:
        frame = to_grey(image)
    except ValueError as error:
        raise DecodeError(ErrorCode.UNSUPPORTED_IMAGE_LAYOUT, str(error)) from error
    if not np.isfinite(frame).all():
        raise DecodeError(ErrorCode.INVALID_PIXEL_VALUES, "pixel values are not finite (NaN or infinity)")
    return frame


def read_dicom(data: bytes, stop_before_pixels: bool = False) -> pydicom.Dataset:
    """Parse a DICOM file (its header alone with ``stop_before_pixels``), with pydicom's reading validation off: it
    would log an invalid value (a UID with letters, a name in a date) as it stands, and header values are checked by
    ``model.header_values`` instead."""
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=stop_before_pixels)
    except Exception as error:  # pydicom raises many types on malformed input
        raise DecodeError(ErrorCode.DICOM_INVALID, f"not a parseable DICOM file: {type(error).__name__}") from error


def has_pixel_data(dataset: pydicom.Dataset) -> bool:
    return any(keyword in dataset for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def open_dicom(data: bytes) -> pydicom.Dataset:
    """Parse a DICOM file's bytes (pixels still encoded); raises DecodeError for what is no DICOM object at all."""
    dataset = read_dicom(data)
    if not has_pixel_data(dataset) and not header_value(dataset, "SOPClassUID") and not header_value(dataset, "Rows"):
        if has_dicom_marker(data):
            raise DecodeError(ErrorCode.DICOM_INVALID, "a DICOM file without image attributes (truncated or malformed)")
        raise DecodeError(ErrorCode.UNSUPPORTED_FORMAT, "not a DICOM, JPEG or PNG file (no DICOM image attributes)")
    return dataset


def decode_dicom(data: bytes, limits: DecodeLimits) -> DecodedFile:
    return decode_dicom_dataset(open_dicom(data), limits)


def decode_dicom_dataset(dataset: pydicom.Dataset, limits: DecodeLimits) -> DecodedFile:
    """A parsed DICOM object's frames, as displayed grey levels, with its header (see :func:`dicom_header`)."""
    if not has_pixel_data(dataset):
        raise DecodeError(ErrorCode.DICOM_NO_PIXEL_DATA, "DICOM object has no pixel data")
    rows, columns = header_int(dataset, "Rows"), header_int(dataset, "Columns")
    frames = header_int(dataset, "NumberOfFrames") or 1
    if not rows or not columns:
        raise DecodeError(ErrorCode.DICOM_PIXEL_DATA_INVALID, "pixel data without valid Rows and Columns in the header")
    check_frame_size(rows, columns, frames, limits)
    pixels = dicom_pixels(dataset)
    return DecodedFile("dicom", dicom_frames(dataset, pixels, frames), dicom_header(dataset))


def dicom_pixels(dataset: pydicom.Dataset) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dataset.pixel_array
    except NotImplementedError as error:  # pydicom has no decoder for this transfer syntax at all
        raise DecodeError(ErrorCode.DICOM_UNSUPPORTED_TRANSFER_SYNTAX,
                          f"no installed decoder for transfer syntax {transfer_syntax_name(dataset)}") from error
    except Exception as error:  # truncated, inconsistent or undecodable pixel data
        if no_plugin_can_decode(str(error)):
            raise DecodeError(ErrorCode.DICOM_UNSUPPORTED_TRANSFER_SYNTAX,
                              f"no installed decoder for transfer syntax {transfer_syntax_name(dataset)} with "
                              f"{header_int(dataset, 'BitsStored') or '?'}-bit samples") from error
        raise DecodeError(ErrorCode.DICOM_PIXEL_DATA_INVALID,
                          f"pixel data could not be decoded: {one_line(error)}") from error


def transfer_syntax_name(dataset: pydicom.Dataset) -> str:
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    return getattr(syntax, "name", str(syntax))


def no_plugin_can_decode(message: str) -> bool:
    """True when pydicom's decoder plugins declined the data's encoding rather than failing on the data itself."""
    if "missing dependencies" in message:
        return True
    reasons = [line.strip() for line in message.splitlines()[1:] if line.strip()]
    return bool(reasons) and all("does not support" in reason for reason in reasons)


def one_line(error: Exception, limit: int = 300) -> str:
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text[:limit] or type(error).__name__


def dicom_frames(dataset: pydicom.Dataset, pixels: np.ndarray, frames: int) -> list[np.ndarray]:
    samples = header_int(dataset, "SamplesPerPixel") or 1
    stack = pixels if frames > 1 else pixels[np.newaxis]
    expected_ndim = 4 if samples > 1 else 3
    if stack.ndim != expected_ndim or samples not in (1, 3):
        raise DecodeError(ErrorCode.UNSUPPORTED_IMAGE_LAYOUT,
                          f"pixel array of shape {pixels.shape} with {samples} samples per pixel is not an image")
    if samples == 3:
        return [grey_frame(frame) for frame in stack]
    return [grey_frame(display_values(dataset, frame)) for frame in stack]


def display_values(dataset: pydicom.Dataset, frame: np.ndarray) -> np.ndarray:
    """Stored values -> displayed grey levels: modality LUT, VOI LUT/window, MONOCHROME1 inverted."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        # a malformed LUT or window is skipped: preprocessing normalises intensity per image anyway
        values = lut_or_unchanged(apply_modality_lut, frame, dataset)
        if "VOILUTSequence" in dataset or "WindowCenter" in dataset:
            values = lut_or_unchanged(apply_voi_lut, values, dataset)
    if not np.isfinite(values).all():
        raise DecodeError(ErrorCode.INVALID_PIXEL_VALUES, "rescale slope/intercept produce non-finite pixel values")
    if header_text(dataset, "PhotometricInterpretation") == "MONOCHROME1":
        values = values.max() - values
    return values.astype(np.float32)


def lut_or_unchanged(lut, values: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    try:
        return lut(values, dataset).astype(np.float64)
    except Exception:  # pydicom raises many types for a malformed LUT
        return values.astype(np.float64)


def header_value(dataset: pydicom.Dataset, keyword: str):
    """An element's value, or None when it is absent or its stored text does not parse (a malformed header)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dataset.get(keyword)
    except Exception:  # pydicom converts values lazily and raises many types for a bad one
        return None


def header_int(dataset: pydicom.Dataset, keyword: str) -> int | None:
    value = header_value(dataset, keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def header_text(dataset: pydicom.Dataset, keyword: str) -> str:
    value = header_value(dataset, keyword)
    return str(value) if value not in (None, "") else ""


def float_list(value) -> list[float] | None:
    try:
        return [float(item) for item in value] if value is not None else None
    except (TypeError, ValueError):
        return None


def dicom_attributes(dataset: pydicom.Dataset, keywords: tuple[str, ...]) -> dict:
    """The values of ``keywords`` (text, numbers, or a list for a multi-valued element; None when absent or
    malformed), for selection rules to read without pydicom types."""
    attributes = {}
    for keyword in keywords:
        value = header_value(dataset, keyword)
        if isinstance(value, (MultiValue, list, tuple)):
            value = [str(item) for item in value]
        elif value is not None and not isinstance(value, (int, float)):
            value = str(value)
        attributes[keyword] = value
    return attributes


def dicom_header(dataset: pydicom.Dataset) -> dict:
    """Identifiers and geometry for keys and slice ordering; raw identifiers never leave the worker.

    The values that are stored as they are checked first (``model.header_values``): ``StudyDate`` is a valid date
    (YYYYMMDD) or empty, ``Modality`` a valid code string, its marker, or empty. ``FramePositions`` holds each
    frame's ImagePositionPatient from the Per-frame Functional Groups of a multi-frame object (None where the file
    has none); the orientation falls back to the Shared Functional Groups."""
    positions = frame_positions(dataset)
    return {
        **{keyword: header_text(dataset, keyword)
           for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")},
        "StudyDate": dicom_date(header_text(dataset, "StudyDate")) or "",
        "Modality": code_string(header_text(dataset, "Modality")) or "",
        "InstanceNumber": header_int(dataset, "InstanceNumber"),
        "ImagePositionPatient": float_list(header_value(dataset, "ImagePositionPatient")),
        "ImageOrientationPatient": float_list(header_value(dataset, "ImageOrientationPatient"))
        or functional_group_value(header_value(dataset, "SharedFunctionalGroupsSequence"), "PlaneOrientationSequence",
                                  "ImageOrientationPatient"),
        "FramePositions": positions,
        "BurnedInText": burned_in_text(dataset),
    }


SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage; its multi-frame kinds add .1-.4


def burned_in_text(dataset: pydicom.Dataset) -> bool:
    """Whether the pixels may carry burned-in text that identifies the patient: the file says so (Burned In
    Annotation YES), or it is a secondary capture (a screenshot or a scanned page, where text is common) that does not
    say NO. Such pixels may be scored but are never drawn in a report."""
    declared = header_text(dataset, "BurnedInAnnotation").strip().upper()
    if declared in ("YES", "NO"):
        return declared == "YES"
    sop_class = header_text(dataset, "SOPClassUID")
    return sop_class == SECONDARY_CAPTURE or sop_class.startswith(SECONDARY_CAPTURE + ".")


def functional_group_value(groups, macro: str, keyword: str) -> list[float] | None:
    """``keyword`` of the first item of ``macro`` in a functional-groups item, or None when any part is missing."""
    try:
        item = groups[0] if groups is not None and not isinstance(groups, pydicom.Dataset) else groups
        return float_list(header_value(header_value(item, macro)[0], keyword))
    except (TypeError, IndexError, AttributeError):
        return None


def frame_positions(dataset: pydicom.Dataset) -> list[list[float] | None] | None:
    per_frame = header_value(dataset, "PerFrameFunctionalGroupsSequence")
    if not per_frame:
        return None
    try:
        return [functional_group_value(item, "PlanePositionSequence", "ImagePositionPatient") for item in per_frame]
    except TypeError:
        return None
