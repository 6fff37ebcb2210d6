"""The agreement rule a faster graph must meet on held-out images, on figures made to sit either side of it."""

import numpy as np

from model.agreement import (DECISION_AGREEMENT, PROBABILITY_TOLERANCE, Answers, agreement, check_images, holds,
                             startup_check, verdict)
from model.preprocessing import PreprocessConfig

THRESHOLD = 0.3


def answers(tumor, unfamiliar=None) -> Answers:
    tumor = np.asarray(tumor, float)
    return Answers(tumor, np.zeros(len(tumor), bool) if unfamiliar is None else np.asarray(unfamiliar, bool))


def test_a_graph_that_moves_no_decision_and_stays_within_the_tolerance_holds():
    reference = answers(np.linspace(0, 1, 1000))
    candidate = answers(reference.tumor + PROBABILITY_TOLERANCE / 2 * np.sign(reference.tumor - THRESHOLD))
    figures = agreement(reference, candidate, THRESHOLD)
    assert figures["decision_agreement"] == 1.0 and figures["probability_within_tolerance"] == 1.0
    assert holds(figures) and verdict({"set": figures})["earns_default"]


def test_one_decision_in_a_hundred_changed_fails_the_rule():
    reference = answers(np.full(1000, 0.9))
    moved = reference.tumor.copy()
    moved[:10] = 0.1  # ten of 1,000 images unflagged
    figures = agreement(reference, answers(moved), THRESHOLD)
    assert figures["decision_agreement"] == 0.99 < DECISION_AGREEMENT
    assert not holds(figures)
    assert verdict({"moved": figures, "fine": agreement(reference, reference, THRESHOLD)})["failing_sets"] == ["moved"]


def test_probabilities_that_drift_without_crossing_the_threshold_still_fail():
    reference = answers(np.full(200, 0.8))
    figures = agreement(reference, answers(reference.tumor - 0.1), THRESHOLD)
    assert figures["decision_agreement"] == 1.0 and figures["probability_within_tolerance"] == 0.0
    assert not holds(figures)


def test_an_unfamiliar_mark_that_changes_is_a_changed_decision():
    reference = answers(np.full(100, 0.9))
    candidate = answers(reference.tumor, np.arange(100) < 5)
    figures = agreement(reference, candidate, THRESHOLD)
    assert figures["unfamiliar_agreement"] == 0.95 and figures["decision_agreement"] == 0.95


def test_nothing_measured_earns_nothing():
    assert not verdict({})["earns_default"]


def test_the_start_up_check_names_what_changed():
    reference = answers([0.9, 0.1, 0.5])
    assert startup_check(reference, answers([0.91, 0.12, 0.49]), THRESHOLD) is None
    problem = startup_check(reference, answers([0.9, 0.1, 0.5], [False, False, True]), THRESHOLD)
    assert "changes 1 of 3" in problem
    assert "0.200" in startup_check(reference, answers([0.9, 0.1, 0.7]), THRESHOLD)


def test_the_check_images_are_real_slices_at_the_models_size():
    images = check_images(PreprocessConfig(image_size=96))
    assert images.shape == (16, 96, 96) and images.dtype == np.uint8
    assert len({image.tobytes() for image in images}) == 16 and images.std() > 20
