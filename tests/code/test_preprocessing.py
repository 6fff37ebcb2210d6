"""Preprocessing: one implementation, used identically by training and scoring."""

import cv2
import numpy as np

import model.data
import pipeline.scoring.stages
from model.preprocessing import PreprocessConfig, head_bounding_box, preprocess_image
from model.decode import DecodeLimits
from pipeline.scoring.stages import StageContext, file_rows
from tests.conftest import SAMPLES

CONFIG = PreprocessConfig(image_size=96)


def test_training_and_scoring_call_the_same_function():
    assert model.data.preprocess_image is preprocess_image
    assert pipeline.scoring.stages.preprocess_image is preprocess_image


def test_training_loader_and_scoring_stage_give_identical_model_inputs():
    path = next((SAMPLES / "archive" / "loose").glob("glioma-*.jpg"))
    training = model.data.load_labelled_batch({"uri": np.array([str(path)]), "label": np.array(["glioma"])},
                                              CONFIG)
    context = StageContext("run", "2026-01-01", CONFIG, DecodeLimits(), None, 0.5, "v", "sha")
    scoring = file_rows(str(path), context)
    assert training["error"][0] == ""
    assert len(scoring) == 1 and scoring[0]["status"] == "ok"
    np.testing.assert_array_equal(training["image"][0], scoring[0]["image"])


def test_output_is_square_uint8_of_the_configured_size_for_any_input():
    rng = np.random.default_rng(0)
    for shape in [(300, 200), (64, 500, 3), (1000, 1000, 4), (40, 40, 1)]:
        image = rng.integers(0, 4000, size=shape).astype(np.uint16)
        out = preprocess_image(image, CONFIG)
        assert out.shape == (96, 96) and out.dtype == np.uint8


def test_intensity_is_normalised_per_image():
    path = next((SAMPLES / "archive" / "loose").glob("meningioma-*.jpg"))
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    dark, bright = preprocess_image(grey * 0.2, CONFIG), preprocess_image(grey * 12 + 500, CONFIG)
    assert np.abs(dark.astype(int) - bright.astype(int)).mean() < 2.0


def test_crop_finds_the_head_in_a_wide_black_frame():
    canvas = np.zeros((200, 400), dtype=np.uint8)
    cv2.circle(canvas, (300, 100), 60, 200, -1)
    top, bottom, left, right = head_bounding_box(canvas, CONFIG)
    assert 230 <= left <= 240 and 360 <= right <= 372 and top <= 40 and bottom >= 160


def test_a_constant_image_gives_a_flat_input_without_failing():
    out = preprocess_image(np.full((50, 50), 7.0), CONFIG)
    assert out.shape == (96, 96) and out.min() == out.max()
