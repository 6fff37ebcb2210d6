"""Radiologists' verdicts as training examples: what each verdict labels, and which slices of which files a case's
verdict reaches, read from real Delta tables (committed without Ray) and the sample files they name."""

import re

import pytest

from model.data import DatasetError
from pipeline.review.examples import (NOT_FOUND, latest_cases, latest_per_slice, read_all_reviews, read_reviews,
                                      series_images, verdict_label)
from pipeline.review.verdicts import CONFIRMED, DISMISSED, REOPENED, UNSURE
from tests.conftest import SAMPLES
from tests.support.reviews import EXPECTED, KEY, labelled_slices, reviewed_night


@pytest.mark.parametrize("verdict, corrected_class, predicted_class, label", [
    (CONFIRMED, None, "glioma", "glioma"),  # the model's class
    (CONFIRMED, "pituitary", "glioma", "pituitary"),  # the reviewer's correction
    (CONFIRMED, None, "notumor", "tumor"),  # a flag below an even probability, confirmed without a type
    (CONFIRMED, None, None, "tumor"),
    (DISMISSED, None, "meningioma", "notumor"),
    (DISMISSED, "notumor", "glioma", "notumor"),  # "it is no tumor" is recorded as a dismissal
    (UNSURE, None, "glioma", None),
    (REOPENED, None, "glioma", None),
    (None, None, "glioma", None),
])
def test_a_verdict_gives_its_label(verdict, corrected_class, predicted_class, label):
    assert verdict_label(verdict, corrected_class, predicted_class) == label


def test_a_dismissed_series_labels_every_scored_slice_and_a_confirmed_one_its_deciding_slice():
    scored = [("a.dcm", 0), ("b.dcm", 0), ("c.dcm", 0)]
    assert series_images("notumor", ("b.dcm", 0), scored) == scored
    assert series_images("glioma", ("b.dcm", 0), scored) == [("b.dcm", 0)]


def test_each_case_counts_by_its_latest_verdict():
    rows = [{"run_id": "r", "case_key": "x", "verdict": CONFIRMED}, {"run_id": "r", "case_key": "y", "verdict": UNSURE},
            {"run_id": "r", "case_key": "x", "verdict": REOPENED}, {"run_id": "s", "case_key": "x", "verdict": UNSURE}]
    assert [(row["run_id"], row["case_key"], row["verdict"]) for row in latest_cases(rows)] == [
        ("r", "x", REOPENED), ("r", "y", UNSURE), ("s", "x", UNSURE)]


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    return reviewed_night(tmp_path_factory.mktemp("reviewed"), SAMPLES / "labelled" / "notumor" / "Tr-no_0014.jpg")


def test_the_verdicts_of_a_night_label_the_slices_of_its_files(night):
    reviewed = read_reviews(str(night.results), KEY)
    assert {(image.uri, image.frame): image.label for image in reviewed.images} == labelled_slices(night)
    assert reviewed.record == EXPECTED
    assert {image.source for image in reviewed.images} == {"reviews/results"}
    references = {image.reference for image in reviewed.images}
    assert len(references) == 5 and all(re.fullmatch(r"f-[0-9a-f]{12}", name) for name in references)  # no path


def test_image_verdicts_need_the_key_the_screening_used(night):
    with pytest.raises(DatasetError, match="pseudonym key"):
        read_reviews(str(night.results), None)
    other_key = read_reviews(str(night.results), b"another-key-0123456789abcdef")
    assert other_key.record["dropped"] == {NOT_FOUND: 4}  # three image cases under another key, and the replaced run
    assert {image.label for image in other_key.images} == {"glioma", "notumor"}  # the series keep their slices


def test_a_slice_reviewed_in_two_results_folders_takes_its_latest_verdict(night, tmp_path):
    first = read_reviews(str(night.results), KEY).images
    twice = read_all_reviews((str(night.results), str(night.results)), KEY)
    assert twice.images == latest_per_slice(first) and len(twice.images) == len(first)
    assert twice.record["cases"] == {state: 2 * count for state, count in EXPECTED["cases"].items()}
    with pytest.raises(DatasetError, match="no results tables"):
        read_reviews(str(tmp_path), KEY)
