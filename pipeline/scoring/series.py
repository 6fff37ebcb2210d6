"""Series stage: prediction rows of DICOM frames in, one row per series out.

Slices are ordered along the slice normal (``pipeline.scoring.geometry.slice_order``). Only slices the model classified
(status ``ok``) and found familiar (``ood`` not true) take part in the series' decision; skipped, failed and
unfamiliar slices keep their place in the ordered lists and are counted (``slices_skipped``, ``slices_ood``), but
never raise or lower the score. ``slices_scored`` counts every ``ok`` slice, unfamiliar ones included.

The rule (``SERIES_RULE``, ``adjacent_pair``): a tumor shows on adjacent slices, so a series' tumor probability is
the highest, over every pair of neighbouring taking-part slices in slice order, of the lower probability of the
two: ``max_i min(p_i, p_i+1)``. One noisy slice among quiet ones cannot flag the series alone; two adjacent
suspicious slices do. A series with one taking-part slice takes that slice's probability; one with none has no
probability and no flag. The deciding slice is the more suspicious of the deciding pair (the first on ties, as is
the first pair on ties); ``most_suspicious_slice_index`` points at it in the ordered slices, and the series' class is
its class when the series is flagged (probability at or above the threshold), no tumor otherwise. The rule was
chosen over the others in ``SERIES_RULES`` by ``tools/series_rule_study.py`` (docs/series_rule.md).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from model.labels import NO_TUMOR
from pipeline import schema as col
from pipeline.scoring.geometry import slice_order

SERIES_INPUT_COLUMNS = [col.RUN_ID, col.SERIES_KEY, col.PATIENT_KEY, col.STUDY_KEY, col.STUDY_DATE,
                        col.MODALITY, col.SOURCE_URI, col.FRAME_INDEX, col.INSTANCE_NUMBER, col.SLICE_POSITION,
                        col.STATUS, col.TUMOR_PROBABILITY, col.PREDICTED_CLASS, col.MODEL_VERSION, col.OOD]


class SeriesScore(NamedTuple):
    """A rule's verdict on one series: its tumor probability and the ordered index of the slice that decided it."""

    tumor_probability: float
    deciding_index: int


def taking_part(probabilities: np.ndarray) -> np.ndarray:
    """Ordered indices of the slices with a probability (NaN marks a slice that takes no part)."""
    return np.flatnonzero(~np.isnan(probabilities))


def max_slice(probabilities: np.ndarray) -> SeriesScore | None:
    """The most suspicious slice decides alone (the rule before ``adjacent_pair``)."""
    scored = taking_part(probabilities)
    if len(scored) == 0:
        return None
    deciding = int(scored[np.argmax(probabilities[scored])])
    return SeriesScore(float(probabilities[deciding]), deciding)


def second_highest(probabilities: np.ndarray) -> SeriesScore | None:
    """The second highest slice probability (the only one's, for one slice); the most suspicious slice decides."""
    top = max_slice(probabilities)
    scored = taking_part(probabilities)
    if top is None or len(scored) == 1:
        return top
    return SeriesScore(float(np.sort(probabilities[scored])[-2]), top.deciding_index)


def top3_mean(probabilities: np.ndarray) -> SeriesScore | None:
    """The mean of the three highest slice probabilities (of all, for fewer); the most suspicious slice decides."""
    top = max_slice(probabilities)
    if top is None:
        return None
    return SeriesScore(float(np.sort(probabilities[taking_part(probabilities)])[-3:].mean()), top.deciding_index)


def adjacent_pair(probabilities: np.ndarray) -> SeriesScore | None:
    """``max_i min(p_i, p_i+1)`` over neighbouring taking-part slices; the more suspicious of the best pair decides."""
    scored = taking_part(probabilities)
    if len(scored) < 2:
        return max_slice(probabilities)
    values = probabilities[scored]
    pair_scores = np.minimum(values[:-1], values[1:])
    best = int(np.argmax(pair_scores))  # the first pair on ties
    first, second = int(scored[best]), int(scored[best + 1])
    deciding = second if probabilities[second] > probabilities[first] else first
    return SeriesScore(float(pair_scores[best]), deciding)


SERIES_RULES: dict[str, Callable[[np.ndarray], SeriesScore | None]] = {
    "max": max_slice, "second_highest": second_highest, "top3_mean": top3_mean, "adjacent_pair": adjacent_pair}
SERIES_RULE = "adjacent_pair"


def optional(value):
    """None for every spelling of a missing scalar (None, NaN, pandas' NA); the value otherwise."""
    return None if value is None or (np.ndim(value) == 0 and pd.isna(value)) else value


def unfamiliar(ordered: pd.DataFrame) -> pd.Series:
    """True for the rows marked out of distribution; a missing column or a null (rows before the mark) is False."""
    if col.OOD not in ordered:
        return pd.Series(False, index=ordered.index)
    return ordered[col.OOD].map(lambda value: optional(value) is not None and bool(value))


def order_slices(frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The series' rows in slice order, and what ordered them."""
    positions = [optional(v) for v in frame[col.SLICE_POSITION].tolist()]
    instances = [None if optional(v) is None else int(v) for v in frame[col.INSTANCE_NUMBER].tolist()]
    names = [f"{uri}#{index:06d}" for uri, index in zip(frame[col.SOURCE_URI], frame[col.FRAME_INDEX])]
    order, ordered_by = slice_order(positions, instances, names)
    return frame.iloc[order].reset_index(drop=True), ordered_by


def rule_input(ordered: pd.DataFrame) -> np.ndarray:
    """The ordered slices' tumor probabilities as the rules read them: NaN for a slice that takes no part (not
    ``ok``, or unfamiliar)."""
    taking_part_rows = (ordered[col.STATUS] == col.STATUS_OK) & ~unfamiliar(ordered)
    return ordered[col.TUMOR_PROBABILITY].astype(float).where(taking_part_rows).to_numpy(dtype=float)


def decision(ordered: pd.DataFrame, threshold: float) -> dict:
    """The series' tumor probability, flag, class and deciding slice by ``SERIES_RULE`` (all None without one)."""
    score = SERIES_RULES[SERIES_RULE](rule_input(ordered))
    if score is None:
        return {col.TUMOR_PROBABILITY: None, col.PREDICTED_CLASS: None, col.MOST_SUSPICIOUS_SLICE_INDEX: None,
                col.FLAGGED: None}
    flagged = score.tumor_probability >= threshold
    return {col.TUMOR_PROBABILITY: score.tumor_probability, col.FLAGGED: flagged,
            col.PREDICTED_CLASS: ordered[col.PREDICTED_CLASS][score.deciding_index] if flagged else NO_TUMOR,
            col.MOST_SUSPICIOUS_SLICE_INDEX: score.deciding_index}


def summarize_series(frame: pd.DataFrame, threshold: float, run_date: str) -> pd.DataFrame:
    """One series' rows -> its one summary row (pandas in, pandas out, for ``map_groups``)."""
    ordered, ordered_by = order_slices(frame)
    probabilities = ordered[col.TUMOR_PROBABILITY].astype(float)
    scored = ordered[col.STATUS] == col.STATUS_OK
    first = ordered.iloc[0]
    return pd.DataFrame([{
        col.RUN_ID: first[col.RUN_ID], col.RUN_DATE: run_date, col.PATIENT_KEY: first[col.PATIENT_KEY],
        col.STUDY_KEY: first[col.STUDY_KEY], col.SERIES_KEY: first[col.SERIES_KEY],
        col.STUDY_DATE: first[col.STUDY_DATE], col.MODALITY: first[col.MODALITY], col.SLICES: len(ordered),
        col.SLICES_SCORED: int(scored.sum()), col.SLICE_ORDER: ordered_by,
        col.SLICES_SKIPPED: int((ordered[col.STATUS] == col.STATUS_SKIPPED).sum()),
        col.SLICES_OOD: int((scored & unfamiliar(ordered)).sum()),
        col.ORDERED_SOURCE_URIS: ordered[col.SOURCE_URI].tolist(),
        col.ORDERED_FRAME_INDICES: [int(v) for v in ordered[col.FRAME_INDEX]],
        col.ORDERED_TUMOR_PROBABILITIES: [optional(float(v)) for v in probabilities],
        **decision(ordered, threshold), col.MODEL_VERSION: first[col.MODEL_VERSION]}])


def series_table(frame: pd.DataFrame) -> pa.Table:
    """Summary rows (pandas) -> an Arrow table with the declared series schema."""
    records = frame.to_dict(orient="records")
    return pa.Table.from_pylist([{name: optional_value(row.get(name)) for name in col.SERIES_SCHEMA.names}
                                 for row in records], schema=col.SERIES_SCHEMA)


def optional_value(value):
    if hasattr(value, "tolist"):
        value = value.tolist()
    return optional(value)
