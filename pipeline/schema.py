"""Column names, error codes and the Parquet schemas of the three results tables, declared once.

``predictions``: one row per input image (per frame of a multi-frame DICOM). ``series``: one row per DICOM series.
``runs``: one row per run. Every writer casts to these schemas, so a table's columns never drift between runs.
"""

from __future__ import annotations

import pyarrow as pa

from model.labels import CLASS_NAMES

RUN_ID = "run_id"
RUN_DATE = "run_date"
SCORED_AT = "scored_at"
SOURCE_URI = "source_uri"
SOURCE_SHA256 = "source_sha256"
FRAME_INDEX = "frame_index"
FILE_FORMAT = "file_format"
STATUS = "status"
ERROR_CODE = "error_code"
ERROR_MESSAGE = "error_message"
PREDICTED_CLASS = "predicted_class"
TUMOR_PROBABILITY = "tumor_probability"
FLAGGED = "flagged"
PATIENT_KEY = "patient_key"
STUDY_KEY = "study_key"
SERIES_KEY = "series_key"
STUDY_DATE = "study_date"
MODALITY = "modality"
INSTANCE_NUMBER = "instance_number"
SLICE_POSITION = "slice_position"
MODEL_VERSION = "model_version"
MODEL_SHA256 = "model_sha256"
PROBABILITY_COLUMNS = tuple(f"prob_{name}" for name in CLASS_NAMES)

IMAGE = "image"  # in-flight only: the preprocessed model input, never written

STATUS_OK = "ok"
STATUS_ERROR = "error"

ERROR_CODES = {
    "empty_file": "the file has zero bytes",
    "unreadable_file": "the file could not be read from storage",
    "file_too_large": "the file is larger than the byte limit",
    "unsupported_format": "not a DICOM, JPEG or PNG file",
    "image_decode_failed": "a JPEG/PNG that could not be decoded (corrupt or truncated)",
    "image_too_small": "smaller than the minimum side length",
    "image_too_large": "more pixels (or frames) than the decoding limit",
    "unsupported_image_layout": "pixel data is not a grey or RGB image (e.g. 4-D or many samples)",
    "invalid_pixel_values": "pixel values that are not finite after rescaling",
    "dicom_invalid": "the DICOM file could not be parsed",
    "dicom_no_pixel_data": "a DICOM object without pixel data (e.g. a report or structured data)",
    "dicom_unsupported_transfer_syntax": "compressed pixel data with no installed decoder",
    "dicom_pixel_data_invalid": "pixel data shorter than or inconsistent with the header",
    "pseudonym_key_missing": "a DICOM file met without a pseudonym key",
    "inference_failed": "the model could not score the image",
    "internal_error": "an unexpected failure of the pipeline itself on this file (a bug: please report it)",
}

PREDICTIONS_SCHEMA = pa.schema(
    [pa.field(RUN_ID, pa.string()), pa.field(RUN_DATE, pa.string()),
     pa.field(SCORED_AT, pa.timestamp("us", tz="UTC")), pa.field(SOURCE_URI, pa.string()),
     pa.field(SOURCE_SHA256, pa.string()), pa.field(FRAME_INDEX, pa.int32()), pa.field(FILE_FORMAT, pa.string()),
     pa.field(STATUS, pa.string()), pa.field(ERROR_CODE, pa.string()), pa.field(ERROR_MESSAGE, pa.string()),
     pa.field(PREDICTED_CLASS, pa.string())]
    + [pa.field(name, pa.float32()) for name in PROBABILITY_COLUMNS]
    + [pa.field(TUMOR_PROBABILITY, pa.float32()), pa.field(FLAGGED, pa.bool_()),
       pa.field(PATIENT_KEY, pa.string()), pa.field(STUDY_KEY, pa.string()), pa.field(SERIES_KEY, pa.string()),
       pa.field(STUDY_DATE, pa.string()), pa.field(MODALITY, pa.string()), pa.field(INSTANCE_NUMBER, pa.int32()),
       pa.field(SLICE_POSITION, pa.float64()), pa.field(MODEL_VERSION, pa.string()),
       pa.field(MODEL_SHA256, pa.string())])

SERIES_SCHEMA = pa.schema([
    pa.field(RUN_ID, pa.string()), pa.field(RUN_DATE, pa.string()), pa.field(PATIENT_KEY, pa.string()),
    pa.field(STUDY_KEY, pa.string()), pa.field(SERIES_KEY, pa.string()), pa.field(STUDY_DATE, pa.string()),
    pa.field(MODALITY, pa.string()), pa.field("slices", pa.int32()), pa.field("slices_scored", pa.int32()),
    pa.field("slice_order", pa.string()), pa.field("ordered_source_uris", pa.list_(pa.string())),
    pa.field("ordered_frame_indices", pa.list_(pa.int32())),
    pa.field("ordered_tumor_probabilities", pa.list_(pa.float32())),
    pa.field(TUMOR_PROBABILITY, pa.float32()), pa.field(PREDICTED_CLASS, pa.string()),
    pa.field("most_suspicious_slice_index", pa.int32()), pa.field(FLAGGED, pa.bool_()),
    pa.field(MODEL_VERSION, pa.string())])

RUNS_SCHEMA = pa.schema([
    pa.field(RUN_ID, pa.string()), pa.field(RUN_DATE, pa.string()),
    pa.field("started_at", pa.timestamp("us", tz="UTC")), pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    pa.field("duration_seconds", pa.float64()), pa.field("input", pa.string()), pa.field("output", pa.string()),
    pa.field("files_listed", pa.int64()), pa.field("rows_written", pa.int64()), pa.field("rows_scored", pa.int64()),
    pa.field("rows_error", pa.int64()), pa.field("rows_flagged", pa.int64()), pa.field("series", pa.int64()),
    pa.field("series_flagged", pa.int64()), pa.field("errors_by_code", pa.string()),
    pa.field("images_per_second", pa.float64()), pa.field(MODEL_VERSION, pa.string()),
    pa.field(MODEL_SHA256, pa.string()), pa.field("options", pa.string())])
