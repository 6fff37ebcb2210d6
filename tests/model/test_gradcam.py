"""Heat maps on the shipped models and sample images: a heat map per slice, the image's shape, in [0, 1], not
constant, zero outside the head, different for different images and targets, and the same for a slice alone or in a
batch; on the shared LGG gliomas the current model's peaks fall on or near the outlined tumor."""

import numpy as np
import pytest

from model import registry
from model.decode import decode_file
from model.gradcam import TUMOR, GradCam, overlay
from model.preprocessing import PreprocessConfig, head_region, preprocess_image
from tests.conftest import ROOT, SAMPLES, SHARED
from tools import heatmap_study

LGG = SHARED / "lgg-glioma"

LOOSE = SAMPLES / "archive" / "loose"
SAMPLE_IMAGES = ("glioma-Tr-gl_0470.jpg", "meningioma-Tr-me_0570.jpg", "notumor-Tr-no_0791.jpg", "tumor-y147.png")


def preprocessed(info: registry.ModelInfo, names=SAMPLE_IMAGES) -> np.ndarray:
    path_bytes = [((LOOSE / name).read_bytes(), name) for name in names]
    return np.stack([preprocess_image(decode_file(data, name).frames[0], info.preprocessing)
                     for data, name in path_bytes])


@pytest.fixture(scope="module", params=["mri-bilstm-ensemble-v3", "mri-bilstm-v2", "mri-pool-v1"])
def explained(request) -> tuple[np.ndarray, np.ndarray, GradCam]:
    """(slices, their predicted-class heat maps, the explainer) for a shipped model: the bilstm head's map is the
    backbone's stride-16 output, the pooling head's its final one."""
    info = registry.load_model_info(str(ROOT / "models" / request.param))
    explainer = GradCam.from_model_info(info, info.weights_sha256)
    images = preprocessed(info)
    return images, explainer(images), explainer


def test_a_heat_map_has_the_images_shape_spans_zero_to_one_and_is_not_constant(explained):
    images, maps, _ = explained
    assert maps.shape == images.shape and maps.dtype == np.float32
    assert maps.min() >= 0.0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
    assert all(np.std(heat_map) > 0.05 for heat_map in maps)


def test_a_heat_map_is_zero_outside_the_head(explained):
    images, maps, _ = explained
    for image, heat_map in zip(images, maps):
        head = head_region(image, PreprocessConfig())
        assert head.any() and heat_map[~head].max() == 0.0 and heat_map[head].max() == 1.0


def test_different_images_give_different_heat_maps(explained):
    _, maps, _ = explained
    for first in range(len(maps)):
        for second in range(first + 1, len(maps)):
            assert np.abs(maps[first] - maps[second]).mean() > 0.02, (SAMPLE_IMAGES[first], SAMPLE_IMAGES[second])


def test_a_slices_heat_map_does_not_depend_on_its_batch(explained):
    images, maps, explainer = explained
    alone = explainer(images[2:3])
    assert np.allclose(alone[0], maps[2], atol=1e-4)


def test_the_target_decides_the_map(explained):
    images, _, explainer = explained
    tumor_slices = images[[0, 3]]
    tumor_maps, no_tumor_maps = explainer(tumor_slices, target=TUMOR), explainer(tumor_slices, target="notumor")
    assert all(np.std(heat_map) > 0.05 for heat_map in tumor_maps)
    assert np.abs(tumor_maps - no_tumor_maps).mean() > 0.02


def test_an_unknown_target_is_refused_and_an_overlay_is_rgb(explained):
    images, maps, explainer = explained
    with pytest.raises(ValueError, match="unknown Grad-CAM target"):
        explainer(images[:1], target="astrocytoma")
    blended = overlay(images[0], maps[0])
    assert blended.shape == (*images[0].shape, 3) and blended.dtype == np.uint8
    assert not np.array_equal(blended[:, :, 0], blended[:, :, 2])  # coloured where the heat is


@pytest.mark.slow
def test_on_outlined_gliomas_the_peak_falls_on_or_near_the_tumor_well_above_chance():
    """30 seeded LGG slices: the peaks of a shipped model that never saw the LGG set land on or near the outlined
    tumor half again as often as peaks placed at random in the head would, and its heat lies on the tumor half
    again as much as a flat map's. The current model trained on the set, so the study refuses it there."""
    if not LGG.is_dir():
        pytest.skip(f"needs the shared LGG glioma set at {LGG} (absent in a fresh clone)")
    with pytest.raises(SystemExit, match="measure it on a site it never saw"):
        heatmap_study.study(str(ROOT / "models"), str(LGG), images=3)
    figures, slices = heatmap_study.study(str(ROOT / "models" / "mri-bilstm-ensemble-v3"), str(LGG), images=30)
    assert figures["flagged"] == len(slices) >= 20
    overall = figures["overall"]
    assert overall["heat_in_head"] > 0.9
    assert overall["peak_near_tumor"] >= 1.5 * overall["peak_near_tumor_by_chance"]
    assert overall["heat_in_tumor"] >= 1.5 * overall["tumor_area"]
