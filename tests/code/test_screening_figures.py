"""What a night would show for a group of labelled images, on probabilities made to sit either side of the
threshold: unfamiliar images are neither flagged nor given a class, as in the screening job."""

import numpy as np

from model.evaluate import figures_by_group, screening_figures
from model.labels import CLASS_NAMES

GLIOMA, NOTUMOR = CLASS_NAMES.index("glioma"), CLASS_NAMES.index("notumor")


def probabilities(classes: list[int]) -> np.ndarray:
    values = np.full((len(classes), len(CLASS_NAMES)), 0.02)
    values[np.arange(len(classes)), classes] = 1 - 0.02 * (len(CLASS_NAMES) - 1)
    return values


def test_sensitivity_specificity_and_recall_count_what_a_night_flags():
    labels = np.array(["glioma"] * 4 + ["notumor"] * 4)
    predicted = probabilities([GLIOMA, GLIOMA, NOTUMOR, GLIOMA, NOTUMOR, NOTUMOR, GLIOMA, NOTUMOR])
    unfamiliar = np.array([False, False, False, True, False, False, False, True])
    figures = screening_figures(predicted, unfamiliar, labels, threshold=0.5)
    assert figures["sensitivity"] == 0.5  # the unfamiliar glioma is not flagged
    assert figures["specificity"] == 0.75
    assert figures["marked_unfamiliar"] == 0.25
    assert figures["class_recall"] == {"glioma": round(2 / 3, 4), "notumor": round(2 / 3, 4)}
    # ranking, threshold aside: of the 16 tumor/tumor-free pairs 9 are ordered right, 6 tied (half each), 1 wrong
    assert figures["roc_auc"] == 0.75


def test_the_ranking_figure_needs_both_kinds_of_image():
    figures = screening_figures(probabilities([GLIOMA, NOTUMOR]), np.zeros(2, bool), np.array(["glioma"] * 2), 0.5)
    assert figures["roc_auc"] is None and figures["specificity"] is None


def test_groups_are_judged_apart():
    labels = np.array(["glioma", "notumor", "glioma", "notumor"])
    groups = np.array(["flair", "flair", "t1pre", "t1pre"], dtype=object)
    figures = figures_by_group(probabilities([GLIOMA, NOTUMOR, NOTUMOR, GLIOMA]), np.zeros(4, bool), labels, groups,
                               threshold=0.5)
    assert figures["flair"]["sensitivity"] == 1.0 and figures["flair"]["specificity"] == 1.0
    assert figures["t1pre"]["sensitivity"] == 0.0 and figures["t1pre"]["specificity"] == 0.0
