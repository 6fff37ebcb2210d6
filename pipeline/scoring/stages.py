"""The per-batch work of the scoring pipeline, as Ray Data ``map_batches`` functions and callable classes.

``decode_and_preprocess`` (stateless, CPU): source URIs in, one row per frame out, each with its preprocessed
model input or an error row naming the problem. ``InferenceActor`` (holds the model): fills the probability
columns of the ``ok`` rows. ``to_predictions_table``: casts to the declared Parquet schema and drops the image.
``ScoringActor``, what the pipeline runs: inference then the cast, with the decoding in the same process on
CPU-only clusters.
Between stages every batch is a pyarrow table in ``IN_FLIGHT_SCHEMA``, so a batch whose rows are all errors (all
nulls in a column) has the same types as any other.
No stage raises for bad input: every file ends as rows with ``status`` ``ok`` or ``error``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import hashlib
import logging
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infra import storage
from model import registry
from model.decode import (DecodedFile, DecodeError, DecodeLimits, decode_dicom_dataset, decode_file, dicom_attributes,
                          dicom_header, open_dicom, sniff_format)
from model.errors import ErrorCode
from model.labels import CLASS_NAMES, NO_TUMOR_INDEX
from model.backends import TENSORFLOW, make_predictor
from model.preprocessing import PreprocessConfig, preprocess_image
from pipeline import schema as col
from pipeline.scoring.geometry import slice_position
from pipeline.pseudonym import pseudonymize
from pipeline.sources.pacs import PacsAddress, PacsOptions, is_dicomweb, pacs_for
from pipeline.sources.selection import NO_HEADER, Decision, SelectionRules

logger = logging.getLogger(__name__)
READ_AHEAD_FILES = 16  # files of a batch read ahead of the one being decoded
READ_AHEAD_BYTES = 128 * 1024 * 1024  # and at most this much of them, by the listed sizes


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What every row of one run shares; built once by the orchestrator and passed to each stage."""

    run_id: str
    run_date: str
    preprocessing: PreprocessConfig
    limits: DecodeLimits
    pseudonym_key: bytes | None = dataclasses.field(repr=False)
    threshold: float
    model_version: str
    model_sha256: str
    selection: SelectionRules = SelectionRules(())  # which DICOM objects are brain MRI (pipeline.sources.selection)
    pacs: PacsOptions | None = None  # how instances listed from a PACS are retrieved (pipeline.sources.pacs)


def base_row(uri: str, sha256: str | None, context: StageContext) -> dict:
    return {col.RUN_ID: context.run_id, col.RUN_DATE: context.run_date, col.SOURCE_URI: uri,
            col.SOURCE_SHA256: sha256, col.FRAME_INDEX: 0, col.FILE_FORMAT: None, col.STATUS: col.STATUS_OK,
            col.ERROR_CODE: None, col.ERROR_MESSAGE: None, col.MODEL_VERSION: context.model_version,
            col.MODEL_SHA256: context.model_sha256}


def error_row(uri: str, sha256: str | None, code: ErrorCode, message: str, context: StageContext,
              file_format: str | None = None) -> dict:
    return {**base_row(uri, sha256, context), col.FILE_FORMAT: file_format, col.STATUS: col.STATUS_ERROR,
            col.ERROR_CODE: code, col.ERROR_MESSAGE: message}


def dicom_columns(header: dict, key: bytes) -> dict:
    return {col.PATIENT_KEY: pseudonymize(header["PatientID"], key, "patient"),
            col.STUDY_KEY: pseudonymize(header["StudyInstanceUID"], key, "study"),
            col.SERIES_KEY: pseudonymize(header["SeriesInstanceUID"], key, "series"),
            col.STUDY_DATE: header["StudyDate"] or None, col.MODALITY: header["Modality"] or None,
            col.INSTANCE_NUMBER: header["InstanceNumber"],
            col.SLICE_POSITION: slice_position(header["ImagePositionPatient"], header["ImageOrientationPatient"])}


def frame_slice_position(header: dict, index: int) -> float | None:
    """A multi-frame object's own position for frame ``index``, when its Per-frame Functional Groups give one."""
    positions = header.get("FramePositions") or []
    position = positions[index] if index < len(positions) else None
    return slice_position(position, header["ImageOrientationPatient"]) if position else None


def frame_rows(uri: str, sha256: str, decoded: DecodedFile, context: StageContext) -> list[dict]:
    """One row per frame, each with its preprocessed image (or an error row for a frame that fails)."""
    shared = {**base_row(uri, sha256, context), col.FILE_FORMAT: decoded.file_format}
    if decoded.file_format == "dicom":
        shared.update(dicom_columns(decoded.header, context.pseudonym_key))
    rows = []
    for index, frame in enumerate(decoded.frames):
        row = {**shared, col.FRAME_INDEX: index}
        own_position = frame_slice_position(decoded.header, index) if decoded.file_format == "dicom" else None
        if own_position is not None:
            row[col.SLICE_POSITION] = own_position
        try:
            row[col.IMAGE] = preprocess_image(frame, context.preprocessing)
        except (ValueError, ArithmeticError) as error:
            row.update({col.STATUS: col.STATUS_ERROR, col.ERROR_CODE: ErrorCode.INVALID_PIXEL_VALUES,
                        col.ERROR_MESSAGE: f"frame {index} could not be preprocessed: {error}"})
        rows.append(row)
    return rows


def read_source(uri: str, context: StageContext) -> bytes | dict:
    """A file's bytes, or the error row of a file that cannot be read or is over the size limit; for a PACS
    instance, the skipped row of one the selection rules skip by its series' search attributes."""
    try:
        if is_dicomweb(uri):
            return storage.within(storage.READ_TIMEOUT, f"retrieving {uri}", pacs_instance, uri, context)
        return storage.read_bytes(uri, max_bytes=context.limits.max_file_bytes)
    except storage.FileTooLargeError as error:
        return error_row(uri, None, ErrorCode.FILE_TOO_LARGE, str(error), context)
    except storage.StorageError as error:
        return error_row(uri, None, ErrorCode.UNREADABLE_FILE, str(error), context)


def pacs_instance(uri: str, context: StageContext) -> bytes | dict:
    """A PACS instance's bytes (WADO-RS), unless the selection rules skip it on its study's and series' search
    attributes: then its skipped row, with the keys and the rule, and the instance is never retrieved (no sha256)."""
    address = PacsAddress.of_instance(uri)
    pacs = pacs_for(address.server, context.pacs or PacsOptions())
    searched = pacs.series_attributes(address, context.selection.keywords)
    decision = context.selection.decide_before_retrieval(dicom_attributes(searched.dataset, context.selection.keywords),
                                                         searched.known)
    if decision is None:
        return pacs.retrieve(address, context.limits.max_file_bytes)
    if context.pseudonym_key is None:
        return error_row(uri, None, ErrorCode.PSEUDONYM_KEY_MISSING, "DICOM instance met but no pseudonym key was "
                         "given", context, "dicom")
    header = {**dicom_header(searched.dataset), "InstanceNumber": pacs.instance_number(address)}
    return skipped_row(uri, None, header, decision, context)


def read_ahead(uris: Sequence[str], sizes: Sequence[int], context: StageContext) -> Iterator[bytes | dict]:
    """``read_source`` of each URI, in order, read from threads up to ``READ_AHEAD_FILES`` files and, by the listed
    sizes, ``READ_AHEAD_BYTES`` ahead of the one being decoded (a file larger than that is read alone): an S3 or
    network-disk read waits on the network, not the CPU, so reads overlap each other and the decoding."""
    with concurrent.futures.ThreadPoolExecutor(READ_AHEAD_FILES, thread_name_prefix="read-ahead") as pool:
        pending: collections.deque = collections.deque()
        ahead = 0
        for uri, size in zip(uris, sizes):
            size = max(int(size), 0)
            while pending and (len(pending) >= READ_AHEAD_FILES or ahead + size > READ_AHEAD_BYTES):
                future, read_size = pending.popleft()
                ahead -= read_size
                yield future.result()
            pending.append((pool.submit(read_source, uri, context), size))
            ahead += size
        while pending:
            yield pending.popleft()[0].result()


def file_rows(uri: str, context: StageContext, source: bytes | dict | None = None) -> list[dict]:
    """Decode and preprocess one file, given its ``read_source`` (read here when None); never raises for a bad
    file."""
    data = read_source(uri, context) if source is None else source
    if isinstance(data, dict):
        return [data]
    sha256 = hashlib.sha256(data).hexdigest()
    if context.pseudonym_key is None and data and sniff_format(data, uri) == "dicom":
        return [error_row(uri, sha256, ErrorCode.PSEUDONYM_KEY_MISSING, "DICOM file met but no pseudonym key was given",
                          context, "dicom")]
    try:
        return selected_rows(uri, sha256, data, context)
    except DecodeError as error:
        return [error_row(uri, sha256, error.code, str(error), context, sniff_format(data, uri) if data else None)]
    except MemoryError:
        return [error_row(uri, sha256, ErrorCode.IMAGE_TOO_LARGE, "decoding ran out of memory", context)]
    except Exception as error:  # a bug must cost one file its score, not the run; the type only: no header values
        logger.error("unexpected %s while decoding %s", type(error).__name__, uri)
        return [error_row(uri, sha256, ErrorCode.INTERNAL_ERROR, f"unexpected {type(error).__name__} while decoding",
                          context)]


def selected_rows(uri: str, sha256: str, data: bytes, context: StageContext) -> list[dict]:
    """A DICOM object goes to the selection rules before its pixels are decoded: a skip is one row with the rule
    and its reason; what is scored (and every JPEG/PNG, which has no header) is decoded into frame rows."""
    if not data or sniff_format(data, uri) != "dicom":
        return [{**row, col.SELECTION_RULE: NO_HEADER}
                for row in frame_rows(uri, sha256, decode_file(data, uri, context.limits), context)]
    dataset = open_dicom(data)
    decision = context.selection.decide(dicom_attributes(dataset, context.selection.keywords))
    if decision.skips:
        return [skipped_row(uri, sha256, dicom_header(dataset), decision, context)]
    decoded = decode_dicom_dataset(dataset, context.limits)
    return [{**row, col.SELECTION_RULE: decision.rule} for row in frame_rows(uri, sha256, decoded, context)]


def skipped_row(uri: str, sha256: str, header: dict, decision: Decision, context: StageContext) -> dict:
    """The one row of a DICOM object the selection rules skip: its keys and the rule, never a class."""
    return {**base_row(uri, sha256, context), **dicom_columns(header, context.pseudonym_key),
            col.FILE_FORMAT: "dicom", col.STATUS: col.STATUS_SKIPPED, col.SELECTION_RULE: decision.rule,
            col.SKIP_REASON: decision.reason}


IN_FLIGHT_SCHEMA = pa.schema([field for field in col.PREDICTIONS_SCHEMA if field.name != col.SCORED_AT]
                             + [pa.field(col.IMAGE, pa.binary())])


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Frame rows -> a table in ``IN_FLIGHT_SCHEMA``: every batch typed alike, whatever its nulls (the image is
    the preprocessed uint8 square, as bytes)."""
    columns = {field.name: [row.get(field.name) for row in rows] for field in IN_FLIGHT_SCHEMA
               if field.name != col.IMAGE}
    columns[col.IMAGE] = [None if row.get(col.IMAGE) is None else row[col.IMAGE].tobytes() for row in rows]
    return pa.Table.from_pydict(columns, schema=IN_FLIGHT_SCHEMA)


def decode_and_preprocess(batch: dict[str, np.ndarray], context: StageContext, cpus: float | None = None) -> pa.Table:
    """Ray Data function: a batch of ``source_uri`` (with the listing's ``source_size`` in bytes and
    ``source_modified`` in microseconds since the epoch, -1 where unknown) -> a table of frame rows with model
    inputs. ``cpus``: what Ray reserved for the task, which bounds OpenCV's threads."""
    if cpus is not None:
        bound_threads(cpus)
    uris = batch[col.SOURCE_URI]
    unknown = np.full(len(uris), -1, dtype=np.int64)
    sizes, modified = batch.get(col.SOURCE_SIZE, unknown), batch.get(col.SOURCE_MODIFIED, unknown)
    rows = []
    sources = read_ahead([str(uri) for uri in uris], sizes, context)
    for uri, size, micros, source in zip(uris, sizes, modified, sources):
        when = col.EPOCH + datetime.timedelta(microseconds=int(micros)) if micros >= 0 else None
        listing = {col.SOURCE_SIZE: int(size) if size >= 0 else None, col.SOURCE_MODIFIED: when}
        rows.extend({**row, **listing} for row in file_rows(str(uri), context, source))
    return rows_to_table(rows)


class InferenceActor:
    """Loads the verified model once per actor, then scores the ``ok`` rows of each batch, with TensorFlow or with
    the model's ONNX export, float32 or int8, on ONNX Runtime (``backend``; ``model.backends``: an int8 graph that
    disagrees with float32 on this CPU's start-up check is replaced by float32, and ``self.backend`` says which
    runs). With ``mirror_average`` each image's probabilities are averaged with its left-right mirror's (one more
    inference; the unfamiliarity score reads the image as it is).

    ``model_dir`` is the model folder the driver resolved (never a registry, whose current model may change during
    the run) and ``weights_sha256`` the weights it stamped on every row: an actor that finds other weights there,
    when it starts or restarts, raises ``ModelError`` and the run fails uncommitted."""

    def __init__(self, model_dir: str, weights_sha256: str, threshold: float, cpu_threads: int | None,
                 use_gpu: bool, batch_size: int = 64, backend: str = TENSORFLOW, mirror_average: bool = False):
        info = registry.load_model_info(model_dir)
        self.predictor, self.ood, self.backend = make_predictor(info, backend, weights_sha256, cpu_threads, use_gpu,
                                                                batch_size)
        if self.ood is None:
            logger.warning("model %s has no out-of-distribution detector: the ood columns stay empty", info.version)
        self.image_size = info.preprocessing.image_size
        self.threshold, self.mirror_average = threshold, mirror_average

    def __call__(self, table: pa.Table) -> pa.Table:
        ok = np.asarray(pc.fill_null(pc.equal(table[col.STATUS], col.STATUS_OK), False))
        probabilities = np.full((len(ok), len(CLASS_NAMES)), np.nan, dtype=np.float32)
        ood_scores = np.full(len(ok), np.nan, dtype=np.float32)
        try:
            images = self.images(table.filter(pa.array(ok)))
            probabilities[ok], features = self.predictor.with_features(images)
            if self.mirror_average and len(images):  # the left-right mirror's calibrated probabilities averaged in
                probabilities[ok] = (probabilities[ok] + self.predictor(np.ascontiguousarray(images[:, :, ::-1]))) / 2
            if self.ood is not None and features is not None:
                ood_scores[ok] = self.ood.scores(features)
        except Exception as error:  # a model failure marks the rows, it does not lose them
            logger.exception("inference failed for a batch of %d images", int(ok.sum()))
            table = mark_failed(table, ok, ErrorCode.INFERENCE_FAILED, f"inference failed: {type(error).__name__}")
            ok = np.zeros(len(ok), dtype=bool)
        return self.fill_scores(table, probabilities, ok, ood_scores)

    def images(self, table: pa.Table) -> np.ndarray:
        data = b"".join(table[col.IMAGE].to_pylist())
        return np.frombuffer(data, dtype=np.uint8).reshape(-1, self.image_size, self.image_size)

    def fill_scores(self, table: pa.Table, probabilities: np.ndarray, ok: np.ndarray,
                    ood_scores: np.ndarray) -> pa.Table:
        """The probability columns of the ``ok`` rows; an unfamiliar row (``ood``) keeps its probabilities but gets
        no class and no flag, so it is never counted as tumor or no tumor."""
        missing, unscored = ~ok, np.isnan(ood_scores)
        ood = np.zeros(len(ok), dtype=bool) if self.ood is None else self.ood.marks(np.nan_to_num(ood_scores))
        unclassified = missing | ood
        scores = {name: pa.array(probabilities[:, index], pa.float32(), mask=missing)
                  for index, name in enumerate(col.PROBABILITY_COLUMNS)}
        tumor = 1.0 - probabilities[:, NO_TUMOR_INDEX]
        scores[col.TUMOR_PROBABILITY] = pa.array(tumor, pa.float32(), mask=missing)
        predicted = np.array(CLASS_NAMES, dtype=object)[np.nan_to_num(probabilities).argmax(axis=1)]
        scores[col.PREDICTED_CLASS] = pa.array(predicted, pa.string(), mask=unclassified)
        scores[col.FLAGGED] = pa.array(np.nan_to_num(tumor) >= self.threshold, pa.bool_(), mask=unclassified)
        scores[col.OOD_SCORE] = pa.array(ood_scores, pa.float32(), mask=unscored)
        scores[col.OOD] = pa.array(ood, pa.bool_(), mask=unscored)
        for name, values in scores.items():
            table = table.set_column(table.schema.get_field_index(name), name, values)
        return table


def mark_failed(table: pa.Table, rows: np.ndarray, code: ErrorCode, message: str) -> pa.Table:
    """``table`` with the selected rows turned into error rows carrying ``code`` and ``message``."""
    mask = pa.array(rows)
    for name, value in ((col.STATUS, col.STATUS_ERROR), (col.ERROR_CODE, code), (col.ERROR_MESSAGE, message)):
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, pc.if_else(mask, pa.scalar(value, pa.string()), table[name]))
    return table


def to_predictions_table(table: pa.Table, scored_at) -> pa.Table:
    """A scored table -> exactly ``PREDICTIONS_SCHEMA`` (the image dropped)."""
    table = table.drop_columns([col.IMAGE])
    stamps = pa.array([scored_at] * table.num_rows, type=col.PREDICTIONS_SCHEMA.field(col.SCORED_AT).type)
    return table.append_column(col.SCORED_AT, stamps).select(col.PREDICTIONS_SCHEMA.names).cast(
        col.PREDICTIONS_SCHEMA)


def bound_threads(cpus: float) -> int:
    """OpenCV's thread pool bounded to the CPUs Ray reserved for this task or actor (its default is every core of
    the node, which oversubscribes a node running one such worker per CPU); returns the thread count."""
    import cv2

    threads = max(1, int(cpus))
    cv2.setNumThreads(threads)
    return threads


class ScoringActor:
    """The pipeline's Ray Data actor: scores each batch and hands on exactly ``PREDICTIONS_SCHEMA`` (no image).

    With ``decode`` (CPU-only clusters) a batch is a slice of the listing, and the actor reads, decodes and
    preprocesses it (``decode_and_preprocess``) before scoring: every CPU runs the whole per-image work in one
    process, one actor per CPU, and no image crosses the object store. Without it (GPU actors) a batch is the
    in-flight table of the CPU decoding tasks. ``inference`` are ``InferenceActor``'s arguments."""

    def __init__(self, context: StageContext, scored_at, decode: bool, **inference):
        self.context, self.scored_at, self.decode = context, scored_at, decode
        if decode:
            bound_threads(inference.get("cpu_threads") or 1)
        self.inference = InferenceActor(**inference)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.decode:
            batch = decode_and_preprocess({name: batch[name].to_numpy(zero_copy_only=False)
                                           for name in batch.column_names}, self.context)
        return to_predictions_table(self.inference(batch), self.scored_at)
