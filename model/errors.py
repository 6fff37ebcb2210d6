"""Why an input file or frame has no score: the error codes of the results tables, declared once.

Each code is a member of :class:`ErrorCode` (a ``str``, so it is written to Parquet as its value) and carries the
one-line description the README's table repeats. The decoder (``model.decode``) raises them, the scoring stages
(``pipeline.scoring.stages``) write them, and the summary of every run counts them.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """An error row's ``error_code``; ``ErrorCode.X.description`` says what it means."""

    description: str

    def __new__(cls, value: str, description: str) -> "ErrorCode":
        member = str.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member

    EMPTY_FILE = "empty_file", "the file has zero bytes"
    UNREADABLE_FILE = "unreadable_file", "the file could not be read from storage"
    FILE_TOO_LARGE = "file_too_large", "the file is larger than the byte limit"
    UNSUPPORTED_FORMAT = "unsupported_format", "not a DICOM, JPEG or PNG file"
    IMAGE_DECODE_FAILED = "image_decode_failed", "a JPEG/PNG that could not be decoded (corrupt or truncated)"
    IMAGE_TOO_SMALL = "image_too_small", "smaller than the minimum side length"
    IMAGE_TOO_LARGE = "image_too_large", "more pixels (or frames) than the decoding limit"
    UNSUPPORTED_IMAGE_LAYOUT = ("unsupported_image_layout",
                                "pixel data is not a grey or RGB image (e.g. 4-D or many samples)")
    INVALID_PIXEL_VALUES = "invalid_pixel_values", "pixel values that are not finite after rescaling"
    DICOM_INVALID = "dicom_invalid", "the DICOM file could not be parsed"
    DICOM_NO_PIXEL_DATA = ("dicom_no_pixel_data",
                           "a DICOM object without pixel data (e.g. a report or structured data)")
    DICOM_UNSUPPORTED_TRANSFER_SYNTAX = ("dicom_unsupported_transfer_syntax",
                                         "compressed pixel data with no installed decoder")
    DICOM_PIXEL_DATA_INVALID = ("dicom_pixel_data_invalid",
                                "pixel data shorter than or inconsistent with the header")
    PSEUDONYM_KEY_MISSING = "pseudonym_key_missing", "a DICOM file met without a pseudonym key"
    INFERENCE_FAILED = "inference_failed", "the model could not score the image"
    INTERNAL_ERROR = ("internal_error",
                      "an unexpected failure of the pipeline itself on this file (a bug: please report it)")
