"""On-demand scoring: one uploaded DICOM, JPEG or PNG file, or a zip of one series, scored as the nightly job scores
it, and stored nowhere.

The upload is unpacked within bounds (``UploadLimits``: its size, the zip's members and their unpacked bytes, no
member read past its declared size), each file decoded, selected and preprocessed by the nightly stage
(``pipeline.scoring.stages.file_rows``: the same decoding limits, selection rules and preprocessing), then scored by the
nightly inference (``pipeline.scoring.stages.InferenceActor``: the backend ``model.backends`` chooses, the calibration, the
unfamiliarity check, the model's flag threshold), and a series summarised by the nightly series rule
(``pipeline.scoring.series``). DICOM keys are computed under a key drawn at random for this process and never shown: the
answer names files by their file names alone and carries no patient, study or series key.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import posixpath
import secrets
import zipfile

import numpy as np
import pyarrow as pa

from model import registry
from model.decode import DecodeLimits
from model.labels import CLASS_NAMES
from pipeline import schema as col
from pipeline.sources.selection import SelectionRules, load_rules
from pipeline.scoring.series import SERIES_INPUT_COLUMNS, summarize_series
from pipeline.scoring.stages import StageContext, file_rows, rows_to_table

ON_DEMAND_RUN = "on-demand"  # the run id on-demand rows carry in flight; never written anywhere
ZIP_MAGIC = b"PK\x03\x04"


class UploadError(ValueError):
    """An upload that cannot be scored as sent (too large, an empty or unreadable zip); one sentence."""


@dataclasses.dataclass(frozen=True)
class UploadLimits:
    """Bounds on one upload: its bytes as sent, a zip's member count and unpacked bytes."""

    max_bytes: int = 64 * 2**20
    max_files: int = 1024
    max_unpacked_bytes: int = 256 * 2**20


def upload_files(data: bytes, name: str, limits: UploadLimits) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each file the upload holds: the file itself, or each file of a zip (folders, hidden
    files and macOS resource forks left out), named by its file name alone."""
    if len(data) > limits.max_bytes:
        raise UploadError(f"the upload is {len(data):,} bytes; at most {limits.max_bytes:,} are accepted")
    if not data.startswith(ZIP_MAGIC):
        return [(posixpath.basename(name.replace("\\", "/")) or "upload", data)]
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return zip_members(archive, limits)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as error:
        raise UploadError(f"the zip cannot be read ({error})") from None


def zip_members(archive: zipfile.ZipFile, limits: UploadLimits) -> list[tuple[str, bytes]]:
    members = [info for info in archive.infolist() if not info.is_dir() and not hidden(info.filename)]
    if not members:
        raise UploadError("the zip holds no file")
    if len(members) > limits.max_files:
        raise UploadError(f"the zip holds {len(members)} files; at most {limits.max_files} are accepted")
    files, unpacked = [], 0
    for info in members:
        with archive.open(info) as member:  # read no further than what is left of the bound, whatever it declares
            content = member.read(limits.max_unpacked_bytes - unpacked + 1)
        unpacked += len(content)
        if unpacked > limits.max_unpacked_bytes:
            raise UploadError(f"the zip unpacks to more than {limits.max_unpacked_bytes:,} bytes")
        files.append((posixpath.basename(info.filename), content))
    return files


def hidden(path: str) -> bool:
    parts = path.replace("\\", "/").split("/")
    return parts[0] == "__MACOSX" or parts[-1].startswith(".")


def scoring_context(info: registry.ModelInfo, selection: SelectionRules | None = None,
                    limits: DecodeLimits = DecodeLimits()) -> StageContext:
    """What every on-demand row shares: the model's preprocessing and operating point, the nightly decoding limits
    and bundled selection rules, and a key drawn at random (DICOM keys mean nothing outside this process)."""
    return StageContext(ON_DEMAND_RUN, datetime.date.today().isoformat(), info.preprocessing, limits,
                        secrets.token_bytes(32), info.threshold, info.version, info.weights_sha256,
                        selection or load_rules(None))


def decode_upload(files: list[tuple[str, bytes]], context: StageContext) -> pa.Table:
    """The nightly decoding stage over the uploaded files: a table of frame rows with their model inputs."""
    return rows_to_table([row for name, data in files for row in file_rows(name, context, data)])


def optional_float(value) -> float | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else round(float(value), 6)


def image_answer(row: dict) -> dict:
    """One scored frame as the answer shows it: no key, no path."""
    return {"file": row[col.SOURCE_URI], "frame": row[col.FRAME_INDEX], "status": row[col.STATUS],
            "error_code": row[col.ERROR_CODE], "skip_reason": row[col.SKIP_REASON],
            "predicted_class": row[col.PREDICTED_CLASS],
            "probabilities": {name: optional_float(row[column])
                              for name, column in zip(CLASS_NAMES, col.PROBABILITY_COLUMNS)},
            "tumor_probability": optional_float(row[col.TUMOR_PROBABILITY]), "flagged": row[col.FLAGGED],
            "unfamiliar": bool(row[col.OOD]), "unfamiliarity": optional_float(row[col.OOD_SCORE])}


def series_answers(scored: pa.Table, context: StageContext) -> list[dict]:
    """Each DICOM series of the upload, decided by the nightly series rule over its slices in order."""
    with_series = scored.filter(scored[col.SERIES_KEY].is_valid())
    if with_series.num_rows == 0:
        return []
    frame = with_series.select(SERIES_INPUT_COLUMNS).to_pandas()
    answers = []
    for _, rows in frame.groupby(col.SERIES_KEY, sort=False):
        summary = summarize_series(rows, context.threshold, context.run_date).iloc[0]
        deciding = summary[col.MOST_SUSPICIOUS_SLICE_INDEX]
        has_decision = deciding is not None and not np.isnan(deciding)
        answers.append({
            "slices": int(summary[col.SLICES]), "slices_scored": int(summary[col.SLICES_SCORED]),
            "slices_unfamiliar": int(summary[col.SLICES_OOD]), "slices_skipped": int(summary[col.SLICES_SKIPPED]),
            "slice_order": summary[col.SLICE_ORDER], "ordered_files": list(summary[col.ORDERED_SOURCE_URIS]),
            "tumor_probability": optional_float(summary[col.TUMOR_PROBABILITY]),
            "flagged": None if summary[col.FLAGGED] is None else bool(summary[col.FLAGGED]),
            "predicted_class": summary[col.PREDICTED_CLASS],
            "deciding_slice": int(deciding) + 1 if has_decision else None})
    return answers


def answer(scored: pa.Table, context: StageContext, backend: str) -> dict:
    """The whole answer to one upload: the model, its threshold and backend, each image, each series."""
    return {"model_version": context.model_version, "threshold": context.threshold, "backend": backend,
            "images": [image_answer(row) for row in scored.to_pylist()],
            "series": series_answers(scored, context)}
