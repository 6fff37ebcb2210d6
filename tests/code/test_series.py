"""Series summaries from prediction rows, without Ray: slice order, the series rule (adjacent pairs of slices), its
flag, and which slices take part."""

import numpy as np
import pandas as pd

from pipeline import schema as col
from pipeline.scoring.series import SERIES_RULE, SERIES_RULES, adjacent_pair, series_table, summarize_series


def rows(*slices, ood=None) -> pd.DataFrame:
    """Frames of one series: (file, instance number, position, status, tumor probability, class[, frame index]);
    ``ood``: the frames' out-of-distribution marks (None: the column is null, as in rows from before the mark)."""
    return pd.DataFrame([{
        col.RUN_ID: "run", col.SERIES_KEY: "series", col.PATIENT_KEY: "patient", col.STUDY_KEY: "study",
        col.STUDY_DATE: "20261101", col.MODALITY: "MR", col.SOURCE_URI: uri, col.FRAME_INDEX: frame[0] if frame else 0,
        col.INSTANCE_NUMBER: instance, col.SLICE_POSITION: position, col.STATUS: status,
        col.TUMOR_PROBABILITY: probability, col.PREDICTED_CLASS: predicted, col.MODEL_VERSION: "v",
        col.OOD: None if ood is None else ood[index]}
        for index, (uri, instance, position, status, probability, predicted, *frame) in enumerate(slices)])


def stack(*probabilities, status="ok", tumor_class="glioma") -> list[tuple]:
    """A series of slices 0, 1, 2, ... with these tumor probabilities (tumor class at 0.5 and above)."""
    return [(f"s{index:02d}.dcm", index, float(index), status, probability,
             tumor_class if probability is not None and probability >= 0.5 else "notumor")
            for index, probability in enumerate(probabilities)]


def summarize(frame: pd.DataFrame, threshold: float = 0.5) -> dict:
    [summary] = series_table(summarize_series(frame, threshold=threshold, run_date="d")).to_pylist()
    return summary


def test_slices_are_ordered_along_the_normal_and_the_more_suspicious_of_the_deciding_pair_decides():
    frame = rows(("s3.dcm", 3, 30.0, "ok", 0.7, "meningioma"), ("s1.dcm", 1, 10.0, "ok", 0.9, "glioma"),
                 ("s2.dcm", 2, 20.0, "error", None, None))
    [summary] = summarize_series(frame, threshold=0.5, run_date="2026-11-01").to_dict("records")
    assert summary[col.ORDERED_SOURCE_URIS] == ["s1.dcm", "s2.dcm", "s3.dcm"]
    assert summary[col.SLICE_ORDER] == "slice_position"
    assert (summary[col.SLICES], summary[col.SLICES_SCORED]) == (3, 2)
    # a failed slice between two scored ones does not part them: they are the pair, its lower value the score
    assert summary[col.MOST_SUSPICIOUS_SLICE_INDEX] == 0 and summary[col.TUMOR_PROBABILITY] == 0.7
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


def test_the_chosen_rule_is_the_adjacent_pair_rule():
    assert SERIES_RULE == "adjacent_pair" and SERIES_RULES[SERIES_RULE] is adjacent_pair


def test_one_noisy_slice_among_quiet_ones_does_not_flag():
    summary = summarize(rows(*stack(0.05, 0.1, 0.9, 0.08, 0.02)))
    assert not summary[col.FLAGGED] and summary[col.PREDICTED_CLASS] == "notumor"
    assert abs(summary[col.TUMOR_PROBABILITY] - 0.1) < 1e-6  # the best pair is (0.1, 0.9): its lower value
    assert summary[col.MOST_SUSPICIOUS_SLICE_INDEX] == 2


def test_two_adjacent_suspicious_slices_flag_with_the_class_of_the_more_suspicious():
    slices = stack(0.05, 0.6, 0.1, 0.8, 0.95, 0.2)
    slices[4] = ("s04.dcm", 4, 4.0, "ok", 0.95, "pituitary")
    summary = summarize(rows(*slices))
    assert summary[col.FLAGGED] and abs(summary[col.TUMOR_PROBABILITY] - 0.8) < 1e-6
    assert summary[col.MOST_SUSPICIOUS_SLICE_INDEX] == 4 and summary[col.PREDICTED_CLASS] == "pituitary"


def test_a_series_of_one_scored_slice_takes_its_probability():
    slices = stack(None, 0.7)
    slices[0] = ("s00.dcm", 0, 0.0, "error", None, None)
    summary = summarize(rows(*slices))
    assert summary[col.FLAGGED] and abs(summary[col.TUMOR_PROBABILITY] - 0.7) < 1e-6
    assert summary[col.MOST_SUSPICIOUS_SLICE_INDEX] == 1


def test_skipped_and_unfamiliar_slices_keep_their_place_but_take_no_part():
    slices = stack(0.1, 0.9, 0.95, 0.9, 0.2)
    slices[1] = ("s01.dcm", 1, 1.0, "skipped", None, None)
    frame = rows(*slices, ood=[False, None, True, None, False])  # 0.95 unfamiliar; null marks count as familiar
    summary = summarize(frame)
    assert summary[col.ORDERED_SOURCE_URIS] == [f"s{index:02d}.dcm" for index in range(5)]
    assert (summary[col.SLICES], summary[col.SLICES_SCORED]) == (5, 4)
    assert (summary[col.SLICES_SKIPPED], summary[col.SLICES_OOD]) == (1, 1)
    # taking part: 0.1 (slice 0), 0.9 (slice 3), 0.2 (slice 4): the best pair is (0.9, 0.2)
    assert abs(summary[col.TUMOR_PROBABILITY] - 0.2) < 1e-6 and not summary[col.FLAGGED]
    assert summary[col.MOST_SUSPICIOUS_SLICE_INDEX] == 3


def test_a_series_of_skipped_or_unfamiliar_slices_only_has_no_probability_and_no_flag():
    skipped = summarize(rows(*stack(None, None, None, status="skipped")))
    assert (skipped[col.SLICES], skipped[col.SLICES_SCORED], skipped[col.SLICES_SKIPPED]) == (3, 0, 3)
    unfamiliar = summarize(rows(*stack(0.9, 0.95), ood=[True, True]))
    assert (unfamiliar[col.SLICES_SCORED], unfamiliar[col.SLICES_OOD]) == (2, 2)
    for summary in (skipped, unfamiliar):
        assert summary[col.TUMOR_PROBABILITY] is None and summary[col.FLAGGED] is None
        assert summary[col.PREDICTED_CLASS] is None and summary[col.MOST_SUSPICIOUS_SLICE_INDEX] is None


def test_every_rule_scores_one_ordered_series():
    probabilities = np.array([0.1, np.nan, 0.9, 0.3, 0.6, 0.2])
    scores = {name: rule(probabilities) for name, rule in SERIES_RULES.items()}
    assert scores["max"] == (0.9, 2) and scores["second_highest"] == (0.6, 2)
    assert abs(scores["top3_mean"].tumor_probability - 0.6) < 1e-9 and scores["top3_mean"].deciding_index == 2
    assert scores["adjacent_pair"] == (0.3, 2)  # pairs (0.1, 0.9) (0.9, 0.3) (0.3, 0.6) (0.6, 0.2): best 0.3, first
    assert all(rule(np.full(3, np.nan)) is None for rule in SERIES_RULES.values())
