"""Temperature scaling and the operating point, on probabilities with known answers."""

import numpy as np
import pytest

from model.calibration import apply_temperature, fit_temperature, masked_nll, min_group_tumors, operating_threshold
from model.labels import NO_TUMOR_INDEX, target_mask


def test_temperature_one_changes_nothing_and_any_temperature_keeps_the_ranking():
    probabilities = np.array([[0.7, 0.1, 0.1, 0.1], [0.2, 0.5, 0.2, 0.1]], dtype=np.float32)
    assert apply_temperature(probabilities, 1.0) is probabilities
    softer = apply_temperature(probabilities, 2.0)
    np.testing.assert_allclose(softer.sum(axis=1), 1.0, rtol=1e-6)
    assert (softer.argmax(axis=1) == probabilities.argmax(axis=1)).all()
    assert softer.max() < probabilities.max()
    # softmax(log p / 2) is proportional to sqrt(p)
    expected = np.sqrt(probabilities[0]) / np.sqrt(probabilities[0]).sum()
    np.testing.assert_allclose(softer[0], expected, rtol=1e-5)


def test_an_overconfident_model_gets_a_temperature_above_one():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    correct = rng.random(400) < 0.8  # right 80% of the time, but always 99% sure
    predicted = np.where(correct, labels, (labels + 1) % 4)
    probabilities = np.full((400, 4), 0.01 / 3, dtype=np.float64)
    probabilities[np.arange(400), predicted] = 0.99
    targets = np.eye(4)[labels]
    temperature = fit_temperature(probabilities, targets)
    assert temperature > 1.5
    assert masked_nll(apply_temperature(probabilities, temperature), targets) < masked_nll(probabilities, targets)


def scored(tumor_scores: np.ndarray, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.zeros((len(tumor_scores), 4))
    probabilities[:, NO_TUMOR_INDEX] = 1 - tumor_scores
    probabilities[:, 0] = tumor_scores
    return probabilities, np.stack([target_mask(label) for label in labels])


def test_the_operating_point_flags_the_target_share_of_tumors():
    tumor_scores = np.concatenate([np.linspace(0.01, 0.45, 100), np.zeros(10)])  # 100 tumors, 10 without
    probabilities, targets = scored(tumor_scores, ["glioma"] * 100 + ["notumor"] * 10)
    threshold = operating_threshold(probabilities, targets, 0.98)
    scores = (1 - probabilities[:100, NO_TUMOR_INDEX]).astype(np.float32)  # as the scoring actors compute them
    assert (scores >= threshold).mean() == 0.98  # 2 of 100 may be missed, not 3
    assert threshold == pytest.approx(tumor_scores[2], abs=1e-5)


def test_each_group_large_enough_reaches_the_target_and_the_threshold_is_never_raised_above_one_half():
    typed = np.linspace(0.6, 0.99, 300)  # easy: every typed tumor scores above 0.6
    other_source = np.linspace(0.2, 0.99, 300)  # harder: tumors of unknown type from another source
    probabilities, targets = scored(np.concatenate([typed, other_source]), ["meningioma"] * 300 + ["tumor"] * 300)
    threshold = operating_threshold(probabilities, targets, 0.98)
    assert threshold == pytest.approx(other_source[6], abs=1e-5)  # the harder group decides (6 of 300 may be missed)
    easy, easy_targets = scored(typed, ["pituitary"] * 300)
    assert operating_threshold(easy, easy_targets, 0.98) == 0.5
    with pytest.raises(ValueError, match="no tumor"):
        operating_threshold(probabilities[600:], targets[600:])


def test_a_group_too_small_for_its_own_threshold_counts_in_the_pool_of_all_tumors():
    typed = np.linspace(0.3, 0.99, 400)
    other_source = np.concatenate([[0.001, 0.002], np.linspace(0.5, 0.99, 73)])  # 75 slices, two outliers
    probabilities, targets = scored(np.concatenate([typed, other_source]), ["glioma"] * 400 + ["tumor"] * 75)
    threshold = operating_threshold(probabilities, targets, 0.98)
    assert min_group_tumors(0.98) == 250 > 75
    # 9 of the 475 tumors may be missed: the two outliers and the seven lowest typed tumors, not the second outlier's
    # score, which would have flagged nearly everything
    assert threshold == pytest.approx(typed[7], abs=1e-5)
    scores = 1 - probabilities[:, NO_TUMOR_INDEX]
    assert (scores[:400] >= threshold).mean() >= 0.98 and (scores >= threshold).mean() >= 0.98
    assert (scores[400:] >= threshold).mean() == pytest.approx(73 / 75)
