"""Column names and the Parquet schemas of the three results tables, declared once.

``predictions``: one row per input image (per frame of a multi-frame DICOM). ``series``: one row per DICOM series.
``runs``: one row per run. Every writer casts to these schemas, so a table's columns never drift between runs.
Error codes are ``model.errors.ErrorCode``; ``ERROR_CODES`` maps each to its description.
"""

from __future__ import annotations

import datetime

import pyarrow as pa

from model.errors import ErrorCode
from model.labels import CLASS_NAMES

RUN_ID = "run_id"
RUN_DATE = "run_date"
SCORED_AT = "scored_at"
SOURCE_URI = "source_uri"
SOURCE_SHA256 = "source_sha256"
SOURCE_SIZE = "source_size"
SOURCE_MODIFIED = "source_modified"
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
SELECTION_RULE = "selection_rule"  # the rule of the selection rules (pipeline.sources.selection) that decided the row
SKIP_REASON = "skip_reason"  # why a skipped row was not classified (the rule's reason, with the header values)
OOD_SCORE = "ood_score"  # how unlike the training images the input is (pipeline.scoring.stages, model.ood)
OOD = "ood"  # ood_score above the model's out-of-distribution threshold: not counted as tumor or no tumor
PROBABILITY_COLUMNS = tuple(f"prob_{name}" for name in CLASS_NAMES)

IMAGE = "image"  # in-flight only: the preprocessed model input, never written
# in flight and in a run's listing, source_modified is microseconds since this moment (-1 for unknown)
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)

STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_SKIPPED = "skipped"  # not brain MRI by the selection rules: recorded with the reason, never classified

ERROR_CODES = {code.value: code.description for code in ErrorCode}
# errors that say nothing about the file itself: an incremental run tries such a file again even when unchanged
RETRIED_ERROR_CODES = (ErrorCode.UNREADABLE_FILE, ErrorCode.PSEUDONYM_KEY_MISSING, ErrorCode.INFERENCE_FAILED,
                       ErrorCode.INTERNAL_ERROR)

# series table
SLICES = "slices"
SLICES_SCORED = "slices_scored"
SLICE_ORDER = "slice_order"
ORDERED_SOURCE_URIS = "ordered_source_uris"
ORDERED_FRAME_INDICES = "ordered_frame_indices"
ORDERED_TUMOR_PROBABILITIES = "ordered_tumor_probabilities"
MOST_SUSPICIOUS_SLICE_INDEX = "most_suspicious_slice_index"
SLICES_SKIPPED = "slices_skipped"
SLICES_OOD = "slices_ood"

# runs table
STARTED_AT = "started_at"
FINISHED_AT = "finished_at"
DURATION_SECONDS = "duration_seconds"
INPUT = "input"
OUTPUT = "output"
FILES_LISTED = "files_listed"
MODE = "mode"
FILES_UNCHANGED = "files_unchanged"
FILES_OTHER_MODEL = "files_other_model"
FILES_CARRIED_OVER = "files_carried_over"  # unchanged files whose rows a re-run of a date copied from its run before
ROWS_CARRIED_OVER = "rows_carried_over"  # the rows of those files: counted in rows_written, not scored again
ROWS_WRITTEN = "rows_written"
ROWS_SCORED = "rows_scored"
ROWS_ERROR = "rows_error"
ROWS_FLAGGED = "rows_flagged"
SERIES = "series"
SERIES_FLAGGED = "series_flagged"
ERRORS_BY_CODE = "errors_by_code"
ROWS_SKIPPED = "rows_skipped"
ROWS_OOD = "rows_ood"
SKIPPED_BY_REASON = "skipped_by_reason"  # JSON: rows skipped per selection rule
IMAGES_PER_SECOND = "images_per_second"  # rows written per second of the whole run (start-up included)
SCORING_SECONDS = "scoring_seconds"  # the scoring stage's wall time: actors starting to the last row, Ray's start not
SCORING_IMAGES_PER_SECOND = "scoring_images_per_second"  # rows written per second of scoring_seconds
THRESHOLD = "threshold"
OPTIONS = "options"

PREDICTIONS_SCHEMA = pa.schema(
    [pa.field(RUN_ID, pa.string()), pa.field(RUN_DATE, pa.string()),
     pa.field(SCORED_AT, pa.timestamp("us", tz="UTC")), pa.field(SOURCE_URI, pa.string()),
     pa.field(SOURCE_SHA256, pa.string()), pa.field(SOURCE_SIZE, pa.int64()),
     pa.field(SOURCE_MODIFIED, pa.timestamp("us", tz="UTC")), pa.field(FRAME_INDEX, pa.int32()),
     pa.field(FILE_FORMAT, pa.string()),
     pa.field(STATUS, pa.string()), pa.field(ERROR_CODE, pa.string()), pa.field(ERROR_MESSAGE, pa.string()),
     pa.field(PREDICTED_CLASS, pa.string())]
    + [pa.field(name, pa.float32()) for name in PROBABILITY_COLUMNS]
    + [pa.field(TUMOR_PROBABILITY, pa.float32()), pa.field(FLAGGED, pa.bool_()),
       pa.field(PATIENT_KEY, pa.string()), pa.field(STUDY_KEY, pa.string()), pa.field(SERIES_KEY, pa.string()),
       pa.field(STUDY_DATE, pa.string()), pa.field(MODALITY, pa.string()), pa.field(INSTANCE_NUMBER, pa.int32()),
       pa.field(SLICE_POSITION, pa.float64()), pa.field(MODEL_VERSION, pa.string()),
       pa.field(MODEL_SHA256, pa.string()), pa.field(SELECTION_RULE, pa.string()), pa.field(SKIP_REASON, pa.string()),
       pa.field(OOD_SCORE, pa.float32()), pa.field(OOD, pa.bool_())])

SERIES_SCHEMA = pa.schema([
    pa.field(RUN_ID, pa.string()), pa.field(RUN_DATE, pa.string()), pa.field(PATIENT_KEY, pa.string()),
    pa.field(STUDY_KEY, pa.string()), pa.field(SERIES_KEY, pa.string()), pa.field(STUDY_DATE, pa.string()),
    pa.field(MODALITY, pa.string()), pa.field(SLICES, pa.int32()), pa.field(SLICES_SCORED, pa.int32()),
    pa.field(SLICE_ORDER, pa.string()), pa.field(ORDERED_SOURCE_URIS, pa.list_(pa.string())),
    pa.field(ORDERED_FRAME_INDICES, pa.list_(pa.int32())),
    pa.field(ORDERED_TUMOR_PROBABILITIES, pa.list_(pa.float32())),
    pa.field(TUMOR_PROBABILITY, pa.float32()), pa.field(PREDICTED_CLASS, pa.string()),
    pa.field(MOST_SUSPICIOUS_SLICE_INDEX, pa.int32()), pa.field(FLAGGED, pa.bool_()),
    pa.field(MODEL_VERSION, pa.string()), pa.field(SLICES_SKIPPED, pa.int32()), pa.field(SLICES_OOD, pa.int32())])

RUNS_SCHEMA = pa.schema([
    pa.field(RUN_ID, pa.string()), pa.field(RUN_DATE, pa.string()),
    pa.field(STARTED_AT, pa.timestamp("us", tz="UTC")), pa.field(FINISHED_AT, pa.timestamp("us", tz="UTC")),
    pa.field(DURATION_SECONDS, pa.float64()), pa.field(INPUT, pa.string()), pa.field(OUTPUT, pa.string()),
    pa.field(MODE, pa.string()), pa.field(FILES_LISTED, pa.int64()), pa.field(FILES_UNCHANGED, pa.int64()),
    pa.field(FILES_OTHER_MODEL, pa.int64()), pa.field(ROWS_WRITTEN, pa.int64()), pa.field(ROWS_SCORED, pa.int64()),
    pa.field(ROWS_ERROR, pa.int64()), pa.field(ROWS_FLAGGED, pa.int64()), pa.field(SERIES, pa.int64()),
    pa.field(SERIES_FLAGGED, pa.int64()), pa.field(ERRORS_BY_CODE, pa.string()),
    pa.field(IMAGES_PER_SECOND, pa.float64()), pa.field(MODEL_VERSION, pa.string()),
    pa.field(MODEL_SHA256, pa.string()), pa.field(THRESHOLD, pa.float64()), pa.field(OPTIONS, pa.string()),
    pa.field(ROWS_SKIPPED, pa.int64()), pa.field(ROWS_OOD, pa.int64()), pa.field(SKIPPED_BY_REASON, pa.string()),
    pa.field(SCORING_SECONDS, pa.float64()), pa.field(SCORING_IMAGES_PER_SECOND, pa.float64()),
    pa.field(FILES_CARRIED_OVER, pa.int64()), pa.field(ROWS_CARRIED_OVER, pa.int64())])
