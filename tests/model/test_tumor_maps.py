"""Tumor maps: where a site slice's mask says the tumor is, carried into the model input's geometry, known empty for
a tumor-free image and unknown for a tumor without a mask; the training-only second output that learns them, and
the network's weights picked out of its trainer's."""

import cv2
import numpy as np
import pytest

from model.architecture import build_classifier, build_tumor_map_trainer, tumor_map_crossentropy
from model.config import ArchitectureConfig
from model.data import (IMAGE, MAP_KNOWN, TUMOR_MAP, labelled_rows, list_labelled_images, list_site_images,
                        load_labelled_batch)
from model.decode import DecodeLimits
from model.preprocessing import PreprocessConfig
from model.tensorflow_runtime import tf
from model.train import WeightParts, known_map_targets
from tests.conftest import SAMPLES

CONFIG = PreprocessConfig(image_size=96)
SITE = SAMPLES / "other-site"


def test_every_site_glioma_slice_has_its_mask_and_no_tumor_free_slice_has_one():
    images = list_site_images(str(SITE))
    gliomas = [image for image in images if image.label == "glioma"]
    assert gliomas and all(image.mask.endswith(f"/glioma/mask/{image.uri.rsplit('/', 1)[-1][:-4]}.png")
                           for image in gliomas)
    assert all(not image.mask for image in images if image.label == "notumor")
    assert not any("/mask/" in image.uri for image in images)  # masks are never images to classify
    assert all(not image.mask for image in list_labelled_images(str(SAMPLES / "labelled")))


def test_a_masked_slice_s_map_marks_its_tumor_in_the_model_input_s_geometry(tmp_path):
    glioma = next(image for image in list_site_images(str(SITE)) if image.mask and "flair" in image.uri)
    [row] = labelled_rows(glioma.uri, glioma.label, CONFIG, DecodeLimits(), glioma.mask)
    assert row["error"] == "" and row[MAP_KNOWN] and row[TUMOR_MAP].shape == (96, 96)
    marked = row[TUMOR_MAP] > 0
    assert 0.005 < marked.mean() < 0.5 and set(np.unique(row[TUMOR_MAP])) == {0, 255}
    # a FLAIR glioma is brighter than the brain around it: the marked region is where the bright lesion is
    head = row[IMAGE] > 30
    assert row[IMAGE][marked].mean() > row[IMAGE][head & ~marked].mean() + 20
    # the same mask beside the mirrored slice is mirrored too: the map follows the image's own crop
    mirrored, mirrored_mask = tmp_path / "slice.png", tmp_path / "mask.png"
    cv2.imwrite(str(mirrored), cv2.imread(glioma.uri, cv2.IMREAD_GRAYSCALE)[:, ::-1])
    cv2.imwrite(str(mirrored_mask), cv2.imread(glioma.mask, cv2.IMREAD_GRAYSCALE)[:, ::-1])
    [flipped] = labelled_rows(str(mirrored), "glioma", CONFIG, DecodeLimits(), str(mirrored_mask))
    assert (np.abs(flipped[TUMOR_MAP][:, ::-1].astype(int) - row[TUMOR_MAP]) > 0).mean() < 0.01


def test_tumor_free_slices_have_a_known_empty_map_and_tumors_without_a_mask_an_unknown_one():
    notumor = next(image for image in list_site_images(str(SITE)) if image.label == "notumor")
    tumor = next(image for image in list_labelled_images(str(SAMPLES / "labelled")) if image.label == "glioma")
    batch = load_labelled_batch({"uri": np.array([notumor.uri, tumor.uri]), "label": np.array(["notumor", "glioma"]),
                                 "mask": np.array(["", ""])}, CONFIG)
    assert list(batch[MAP_KNOWN]) == [True, False] and not batch[TUMOR_MAP].any()


def test_a_mask_that_does_not_fit_its_slice_makes_an_error_row_that_says_so(tmp_path):
    glioma = next(image for image in list_site_images(str(SITE)) if image.mask)
    small = tmp_path / "mask.png"
    cv2.imwrite(str(small), np.full((64, 64), 255, np.uint8))
    [row] = labelled_rows(glioma.uri, glioma.label, CONFIG, DecodeLimits(), str(small))
    assert "its mask is 64x64 pixels, the image 256x256" in row["error"] and not row[MAP_KNOWN]


def test_map_targets_are_each_cell_s_tumor_share_and_whether_the_map_is_known():
    maps = np.zeros((2, 96, 96), np.uint8)
    maps[0, :48, :24] = 255  # the top-left quarter of the left half
    targets = known_map_targets(tf.constant(maps), tf.constant([1.0, 0.0]), 6).numpy()
    assert targets.shape == (2, 6, 6, 2)
    np.testing.assert_allclose(targets[0, :3, :, 0].mean(axis=0), [1, 0.5, 0, 0, 0, 0], atol=1e-6)
    assert (targets[0, ..., 1] == 1).all() and (targets[1, ..., 1] == 0).all()
    predicted = tf.fill((2, 6, 6, 1), 0.5)
    loss = tumor_map_crossentropy(tf.constant(targets), predicted).numpy()
    assert loss[0] == pytest.approx(np.log(2), rel=1e-4) and loss[1] == 0.0  # an unknown map costs nothing


def test_the_trainer_shares_the_network_s_layers_and_its_weights_are_picked_out_in_the_network_s_order():
    architecture = ArchitectureConfig(head="bilstm")
    trainer, network = build_tumor_map_trainer(architecture, 96)
    plain = build_classifier(architecture, 96)
    assert [w.shape for w in network.get_weights()] == [w.shape for w in plain.get_weights()]
    assert trainer.outputs[1].shape[1:] == (6, 6, 1) and len(trainer.weights) == len(network.weights) + 2
    parts = WeightParts(trainer, network)
    rng = np.random.default_rng(0)
    chosen = [rng.normal(size=w.shape).astype(np.float32) for w in plain.get_weights()]
    trainer.set_weights(parts.whole(chosen))
    assert all(np.array_equal(a, b) for a, b in zip(network.get_weights(), chosen))
    assert all(np.array_equal(a, b) for a, b in zip(parts.network(trainer.get_weights()), chosen))
    plain.set_weights(parts.network(trainer.get_weights()))
    images = rng.integers(0, 256, (2, 96, 96)).astype(np.uint8)
    np.testing.assert_allclose(plain(images, training=False), trainer(images, training=False)[0], atol=1e-6)
    with pytest.raises(ValueError, match="bilstm head"):
        build_tumor_map_trainer(ArchitectureConfig(head="pooling"), 96)


def test_the_card_names_the_tumor_map_loss_only_for_a_run_that_learned_maps():
    from model.card import loss_text

    assert "plus 2 times the tumor map's cross-entropy" in loss_text({"label_smoothing": 0.05, "tumor_map_weight": 2})
    assert "tumor map" not in loss_text({"label_smoothing": 0.05, "tumor_map_weight": 0.0})
    assert loss_text({}).endswith("-log(1 - p(no tumor)).")
