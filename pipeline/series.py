"""Series stage: prediction rows of DICOM frames in, one row per series out.

Slices are ordered along the slice normal (``pipeline.geometry.slice_order``). A series' tumor probability is the
highest of its slices' (screening favours sensitivity: one suspicious slice flags the series), its class is the
class of that most suspicious slice, and ``most_suspicious_slice_index`` points into the ordered slices.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from model.labels import NO_TUMOR
from pipeline import schema as col
from pipeline.geometry import slice_order

SERIES_INPUT_COLUMNS = [col.RUN_ID, col.SERIES_KEY, col.PATIENT_KEY, col.STUDY_KEY, col.STUDY_DATE,
                        col.MODALITY, col.SOURCE_URI, col.FRAME_INDEX, col.INSTANCE_NUMBER, col.SLICE_POSITION,
                        col.STATUS, col.TUMOR_PROBABILITY, col.PREDICTED_CLASS, col.MODEL_VERSION, col.OOD]


def optional(value):
    """None for every spelling of a missing scalar (None, NaN, pandas' NA); the value otherwise."""
    return None if value is None or (np.ndim(value) == 0 and pd.isna(value)) else value


def summarize_series(frame: pd.DataFrame, threshold: float, run_date: str) -> pd.DataFrame:
    """One series' rows -> its one summary row (pandas in, pandas out, for ``map_groups``)."""
    positions = [optional(v) for v in frame[col.SLICE_POSITION].tolist()]
    instances = [None if optional(v) is None else int(v) for v in frame[col.INSTANCE_NUMBER].tolist()]
    names = [f"{uri}#{index:06d}" for uri, index in zip(frame[col.SOURCE_URI], frame[col.FRAME_INDEX])]
    order, ordered_by = slice_order(positions, instances, names)
    ordered = frame.iloc[order].reset_index(drop=True)
    probabilities = ordered[col.TUMOR_PROBABILITY].astype(float)
    scored = ordered[col.STATUS] == col.STATUS_OK
    first = ordered.iloc[0]
    if scored.any():
        suspicious = int(probabilities.where(scored).idxmax())
        tumor_probability = float(probabilities[suspicious])
        predicted = ordered[col.PREDICTED_CLASS][suspicious] if tumor_probability >= threshold else NO_TUMOR
    else:
        suspicious, tumor_probability, predicted = None, None, None
    return pd.DataFrame([{
        col.RUN_ID: first[col.RUN_ID], col.RUN_DATE: run_date, col.PATIENT_KEY: first[col.PATIENT_KEY],
        col.STUDY_KEY: first[col.STUDY_KEY], col.SERIES_KEY: first[col.SERIES_KEY],
        col.STUDY_DATE: first[col.STUDY_DATE], col.MODALITY: first[col.MODALITY], col.SLICES: len(ordered),
        col.SLICES_SCORED: int(scored.sum()), col.SLICE_ORDER: ordered_by,
        col.ORDERED_SOURCE_URIS: ordered[col.SOURCE_URI].tolist(),
        col.ORDERED_FRAME_INDICES: [int(v) for v in ordered[col.FRAME_INDEX]],
        col.ORDERED_TUMOR_PROBABILITIES: [optional(float(v)) for v in probabilities],
        col.TUMOR_PROBABILITY: tumor_probability, col.PREDICTED_CLASS: predicted,
        col.MOST_SUSPICIOUS_SLICE_INDEX: suspicious,
        col.FLAGGED: None if tumor_probability is None else tumor_probability >= threshold,
        col.MODEL_VERSION: first[col.MODEL_VERSION]}])


def series_table(frame: pd.DataFrame) -> pa.Table:
    records = frame.to_dict(orient="records")
    return pa.Table.from_pylist([{name: optional_value(row.get(name)) for name in col.SERIES_SCHEMA.names}
                                 for row in records], schema=col.SERIES_SCHEMA)


def optional_value(value):
    if hasattr(value, "tolist"):
        value = value.tolist()
    return optional(value)
