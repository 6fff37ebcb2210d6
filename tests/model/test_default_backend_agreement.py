"""The default CPU backend gives float32's answers on MRI it was not tuned on: slices from hospitals and sequences
outside training (the shared LGG set, every sequence, tumor and tumor-free), the sample archive, pydicom's non-MR
images, and contrast/gamma/noise variants of real slices, under ``model.agreement``'s rule. And an int8 graph's
recorded verdict is not taken on trust: where a record says it earned the default, it must hold here too."""

import pathlib

import pytest

from model import registry
from model.agreement import agreement, answers, holds
from model.backends import ONNX, auto_backend, earned_default, make_predictor
from model.heldout import folder_images, held_out_sets
from model.quantize import held_out_agreement
from tests.conftest import ROOT, SHARED, TRAINING

pytestmark = [pytest.mark.shared, pytest.mark.slow]

LGG = SHARED / "lgg-glioma"
FOLDER_IMAGES = 60  # per set drawn from a folder


@pytest.fixture(scope="module")
def lgg_folders() -> dict[str, pathlib.Path]:
    if not LGG.is_dir() or not TRAINING.is_dir():
        pytest.skip(f"needs the shared data sets at {LGG} and {TRAINING} (absent in a fresh clone)")
    return {f"LGG {label} {sequence}": LGG / label / sequence
            for label in ("glioma", "notumor") for sequence in ("flair", "t1pre", "t1post")}


def held_out(info: registry.ModelInfo, folders: dict[str, pathlib.Path]) -> dict:
    real = folder_images(str(TRAINING), info.preprocessing, FOLDER_IMAGES)  # the base of the variants
    return {**held_out_sets(info.preprocessing, real),
            **{name: folder_images(str(folder), info.preprocessing, FOLDER_IMAGES) for name, folder in folders.items()}}


@pytest.mark.parametrize("version", ("mri-bilstm-ensemble-v3", "mri-bilstm-v2"))
def test_the_default_cpu_backend_agrees_with_float32_on_held_out_mri(version, lgg_folders):
    info = registry.load_model_info(str(ROOT / "models" / version))
    sets = held_out(info, lgg_folders)
    assert len(sets) >= 11 and all(len(images) for images in sets.values())
    default, reference = make_predictor(info, auto_backend(info, use_gpu=False)), make_predictor(info, ONNX)
    for name, images in sets.items():
        figures = agreement(answers(*reference[:2], images), answers(*default[:2], images), info.threshold)
        assert holds(figures), (name, figures)
    if earned_default(info):
        int8 = info.metadata["onnx_int8"]
        graph = (pathlib.Path(info.uri) / int8["file"]).read_bytes()
        assert held_out_agreement(info, graph, int8.get("ood_threshold"), sets)["earns_default"]
