"""Series summaries from prediction rows, without Ray: slice order, the series score and its flag."""

import pandas as pd

from pipeline import schema as col
from pipeline.series import series_table, summarize_series


def rows(*slices) -> pd.DataFrame:
    """Frames of one series: (file, instance number, position, status, tumor probability, class[, frame index])."""
    return pd.DataFrame([{
        col.RUN_ID: "run", col.SERIES_KEY: "series", col.PATIENT_KEY: "patient", col.STUDY_KEY: "study",
        col.STUDY_DATE: "20261101", col.MODALITY: "MR", col.SOURCE_URI: uri, col.FRAME_INDEX: frame[0] if frame else 0,
        col.INSTANCE_NUMBER: instance, col.SLICE_POSITION: position, col.STATUS: status,
        col.TUMOR_PROBABILITY: probability, col.PREDICTED_CLASS: predicted, col.MODEL_VERSION: "v"}
        for uri, instance, position, status, probability, predicted, *frame in slices])


def test_slices_are_ordered_along_the_normal_and_the_most_suspicious_decides():
    frame = rows(("s3.dcm", 3, 30.0, "ok", 0.2, "notumor"), ("s1.dcm", 1, 10.0, "ok", 0.9, "glioma"),
                 ("s2.dcm", 2, 20.0, "error", None, None))
    [summary] = summarize_series(frame, threshold=0.5, run_date="2026-11-01").to_dict("records")
    assert summary[col.ORDERED_SOURCE_URIS] == ["s1.dcm", "s2.dcm", "s3.dcm"]
    assert summary[col.SLICE_ORDER] == "slice_position"
    assert (summary[col.SLICES], summary[col.SLICES_SCORED]) == (3, 2)
    assert summary[col.MOST_SUSPICIOUS_SLICE_INDEX] == 0 and summary[col.TUMOR_PROBABILITY] == 0.9
    assert summary[col.PREDICTED_CLASS] == "glioma" and summary[col.FLAGGED]


def test_a_series_below_the_threshold_is_no_tumor_and_one_without_scores_has_none():
    quiet = rows(("a.dcm", 2, None, "ok", 0.3, "meningioma"), ("b.dcm", 1, None, "ok", 0.1, "notumor"))
    [summary] = summarize_series(quiet, threshold=0.5, run_date="d").to_dict("records")
    assert summary[col.SLICE_ORDER] == "instance_number" and summary[col.ORDERED_SOURCE_URIS] == ["b.dcm", "a.dcm"]
    assert summary[col.PREDICTED_CLASS] == "notumor" and not summary[col.FLAGGED]
    broken = rows(("a.dcm", 1, None, "error", None, None))
    table = series_table(summarize_series(broken, threshold=0.5, run_date="d"))
    assert table.schema == col.SERIES_SCHEMA
    assert table[col.FLAGGED].to_pylist() == [None] and table[col.TUMOR_PROBABILITY].to_pylist() == [None]


def test_without_positions_or_distinct_instance_numbers_frames_go_by_file_then_frame_index():
    frame = rows(("b.dcm", 1, None, "ok", 0.1, "notumor", 1), ("a.dcm", 1, None, "ok", 0.2, "notumor", 0),
                 ("b.dcm", 1, None, "error", None, None, 0))
    [summary] = summarize_series(frame, threshold=0.5, run_date="d").to_dict("records")
    assert summary[col.SLICE_ORDER] == "file_name"
    assert summary[col.ORDERED_SOURCE_URIS] == ["a.dcm", "b.dcm", "b.dcm"]
    assert summary[col.ORDERED_FRAME_INDICES] == [0, 0, 1]
    assert summary[col.ORDERED_TUMOR_PROBABILITIES] == [0.2, None, 0.1]
    assert (summary[col.SLICES], summary[col.SLICES_SCORED]) == (3, 2)


def test_a_tie_goes_to_the_first_slice_in_order_and_the_threshold_itself_flags():
    frame = rows(("s2.dcm", 2, 2.0, "ok", 0.5, "pituitary"), ("s1.dcm", 1, 1.0, "ok", 0.5, "meningioma"),
                 ("s0.dcm", 0, 0.0, "error", None, None))
    [summary] = summarize_series(frame, threshold=0.5, run_date="d").to_dict("records")
    assert summary[col.MOST_SUSPICIOUS_SLICE_INDEX] == 1 and summary[col.PREDICTED_CLASS] == "meningioma"
    assert summary[col.TUMOR_PROBABILITY] == 0.5 and summary[col.FLAGGED]
    [above] = summarize_series(frame, threshold=0.51, run_date="d").to_dict("records")
    assert above[col.PREDICTED_CLASS] == "notumor" and not above[col.FLAGGED]
