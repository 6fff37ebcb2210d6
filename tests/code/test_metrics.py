"""Metrics and the masked loss, checked against values computed by hand."""

import numpy as np

from model.labels import CLASS_NAMES, NO_TUMOR_INDEX, target_mask
from model.metrics import classification_metrics, roc_auc
from model.predict import masked_crossentropy_numpy


def test_target_mask_of_a_tumor_of_unknown_type_covers_the_three_tumor_classes():
    mask = target_mask("tumor")
    assert mask[NO_TUMOR_INDEX] == 0 and mask.sum() == 3
    assert target_mask("pituitary").tolist() == [0, 0, 0, 1]


def test_unknown_label_is_refused_with_the_label_named():
    try:
        target_mask("astrocytoma")
    except ValueError as error:
        assert "astrocytoma" in str(error)
    else:
        raise AssertionError("unknown label accepted")


def test_masked_loss_is_cross_entropy_for_one_hot_and_any_tumor_for_unknown_type():
    probabilities = np.array([[0.7, 0.1, 0.1, 0.1], [0.2, 0.2, 0.5, 0.1]], dtype=np.float32)
    assert np.isclose(masked_crossentropy_numpy(probabilities[:1], target_mask("glioma")[None]), -np.log(0.7))
    assert np.isclose(masked_crossentropy_numpy(probabilities[1:], target_mask("tumor")[None]), -np.log(0.5))


def test_roc_auc_matches_pairwise_count():
    rng = np.random.default_rng(1)
    scores, positives = rng.random(60).round(1), rng.random(60) > 0.5
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p in scores[positives] for n in scores[~positives]]
    assert np.isclose(roc_auc(scores, positives), np.mean(pairs))


def test_classification_metrics_on_a_known_confusion():
    targets = np.stack([target_mask(name) for name in ["glioma", "glioma", "meningioma", "notumor", "pituitary",
                                                       "tumor"]])
    predicted = ["glioma", "meningioma", "meningioma", "notumor", "pituitary", "notumor"]
    probabilities = np.stack([np.eye(4)[CLASS_NAMES.index(name)] * 0.9 + 0.025 for name in predicted])
    metrics = classification_metrics(probabilities, targets)
    assert metrics["known_class_images"] == 5 and np.isclose(metrics["accuracy"], 4 / 5)
    assert np.isclose(metrics["per_class"]["glioma"]["recall"], 0.5)
    assert np.isclose(metrics["per_class"]["meningioma"]["precision"], 0.5)
    tumor = metrics["tumor_vs_no_tumor"]
    assert tumor["tumor_images"] == 5 and np.isclose(tumor["sensitivity"], 4 / 5) and tumor["specificity"] == 1.0
    assert metrics["confusion_matrix"]["counts"][0] == [1, 1, 0, 0]


def masks(*names: str) -> np.ndarray:
    return np.stack([target_mask(name) for name in names])


def test_a_class_without_images_scores_zero_and_has_no_roc_auc():
    targets = masks("glioma", "glioma", "meningioma", "notumor")  # no pituitary, and none predicted
    probabilities = np.array([[0.6, 0.2, 0.1, 0.1], [0.3, 0.5, 0.1, 0.1], [0.3, 0.6, 0.05, 0.05],
                              [0.1, 0.1, 0.7, 0.1]])
    metrics = classification_metrics(probabilities, targets)
    assert metrics["per_class"]["pituitary"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert np.isclose(metrics["per_class"]["glioma"]["f1"], 2 / 3)  # precision 1, recall 1/2
    assert np.isclose(metrics["macro_f1"], (2 / 3 + 2 / 3 + 1 + 0) / 4)  # the empty class counts as 0
    # glioma scores 0.6, 0.3 against 0.3, 0.1: three pairs won, one tied
    assert metrics["roc_auc_one_vs_rest"] == {"glioma": 0.875, "meningioma": 1.0, "notumor": 1.0, "pituitary": None}
    assert np.isclose(metrics["roc_auc_macro"], (0.875 + 1 + 1) / 3)
    assert metrics["confusion_matrix"]["counts"] == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_unknown_type_tumors_alone_give_tumor_metrics_and_no_four_class_ones():
    targets = masks("tumor", "tumor", "tumor")
    probabilities = np.array([[0.5, 0.3, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1], [0.2, 0.2, 0.4, 0.2]])
    metrics = classification_metrics(probabilities, targets, threshold=0.5)
    assert (metrics["images"], metrics["known_class_images"]) == (3, 0)
    assert metrics["accuracy"] is None and metrics["expected_calibration_error"] is None
    assert metrics["macro_f1"] == 0.0 and metrics["roc_auc_macro"] is None
    assert set(metrics["roc_auc_one_vs_rest"].values()) == {None}
    assert metrics["confusion_matrix"]["counts"] == [[0] * 4] * 4
    assert metrics["tumor_vs_no_tumor"] == {"threshold": 0.5, "tumor_images": 3, "no_tumor_images": 0,
                                            "sensitivity": 2 / 3, "specificity": None, "roc_auc": None}


def test_expected_calibration_error_weighs_each_bin_by_its_share_of_images():
    targets = masks("glioma", "glioma", "meningioma", "meningioma")
    # two at confidence 0.9, one right; two at 0.7, both right: 2/4 * |0.5 - 0.9| + 2/4 * |1 - 0.7|
    probabilities = np.array([[0.9, 0.05, 0.03, 0.02], [0.05, 0.9, 0.03, 0.02], [0.1, 0.7, 0.1, 0.1],
                              [0.1, 0.7, 0.1, 0.1]])
    metrics = classification_metrics(probabilities, targets)
    assert np.isclose(metrics["expected_calibration_error"], 0.35)
    assert list(metrics) == ["images", "known_class_images", "accuracy", "macro_f1", "per_class",
                             "roc_auc_one_vs_rest", "roc_auc_macro", "expected_calibration_error",
                             "tumor_vs_no_tumor", "confusion_matrix"]
