"""Model directories: weights verified by sha256 and format before loading, registry resolution and promotion
history."""

import json
import pathlib
import pickle

import numpy as np
import pytest

from model import registry
from model.architecture import build_classifier
from model.config import ArchitectureConfig
from model.predict import ProbabilityPredictor, load_classifier
from model.preprocessing import PreprocessConfig

SMALL = ArchitectureConfig(head="pooling")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> tuple[pathlib.Path, object]:
    folder = tmp_path_factory.mktemp("registry") / "v1"
    model = build_classifier(SMALL, 64)
    registry.save_model(model, str(folder), "v1", SMALL, PreprocessConfig(image_size=64), {"note": "test"})
    return folder, model


def test_saved_model_loads_with_identical_predictions(saved_model):
    folder, model = saved_model
    info = registry.load_model_info(str(folder))
    assert info.version == "v1" and info.architecture == SMALL and info.preprocessing.image_size == 64
    images = np.random.default_rng(0).integers(0, 255, size=(3, 64, 64), dtype=np.uint8)
    np.testing.assert_allclose(ProbabilityPredictor(load_classifier(info))(images),
                               ProbabilityPredictor(model)(images), atol=1e-6)


def test_tampered_weights_are_refused(saved_model, tmp_path):
    folder, _ = saved_model
    copy = tmp_path / "tampered"
    copy.mkdir()
    for name in (registry.WEIGHTS_FILE, registry.METADATA_FILE):
        (copy / name).write_bytes((folder / name).read_bytes())
    weights = bytearray((copy / registry.WEIGHTS_FILE).read_bytes())
    weights[-100] ^= 0xFF
    (copy / registry.WEIGHTS_FILE).write_bytes(bytes(weights))
    with pytest.raises(registry.ModelError, match="sha256"):
        registry.load_model_info(str(copy))


def test_a_folder_without_a_model_is_refused_with_its_path(tmp_path):
    with pytest.raises(registry.ModelError, match=str(tmp_path)):
        registry.load_model_info(str(tmp_path))


def test_registry_resolves_to_the_promoted_version_only(saved_model):
    folder, _ = saved_model
    root = str(folder.parent)
    registry.record_decision(root, "v1", False, "not better")
    with pytest.raises(registry.ModelError, match="no promoted model"):
        registry.load_model_info(root)
    state = registry.record_decision(root, "v1", True, "better")
    assert registry.load_model_info(root).version == "v1"
    assert [entry["promoted"] for entry in state["history"]] == [False, True]
    assert json.loads((folder.parent / registry.REGISTRY_FILE).read_text())["current"] == "v1"


def test_the_shipped_model_verifies_and_its_card_names_its_weights():
    info = registry.load_model_info()
    card = (pathlib.Path(registry.DEFAULT_MODEL) / info.version / "MODEL_CARD.md").read_text()
    assert info.weights_sha256 in card and info.version in card
    ablation = info.metadata.get("ablation_runs") or info.metadata.get("ablation", {}).get("history")
    assert ablation and "Head ablation" in card, "the card must carry the head ablation"
    assert info.metadata["operating_point"]["threshold"] == info.threshold and "Calibration" in card
    from model.card import model_card

    recorded = json.loads((pathlib.Path(info.uri) / registry.METADATA_FILE).read_text())
    assert card == model_card(recorded), "the shipped card is stale: regenerate it with model.card.write_model_card"


class PlantedPayload:
    """A pickle that creates ``path`` if anything ever unpickles it."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_a_pickle_with_a_matching_sha256_is_refused_and_never_unpickled(saved_model, tmp_path):
    folder, _ = saved_model
    proof, sentinel = tmp_path / "proof", tmp_path / "sentinel"
    pickle.loads(pickle.dumps(PlantedPayload(proof)))
    assert proof.exists(), "the payload must be live, or this test proves nothing"
    planted = tmp_path / "planted"
    planted.mkdir()
    payload = pickle.dumps(PlantedPayload(sentinel))
    (planted / registry.WEIGHTS_FILE).write_bytes(payload)
    record = {**json.loads((folder / registry.METADATA_FILE).read_text()),
              "weights_sha256": registry.sha256_hex(payload)}
    (planted / registry.METADATA_FILE).write_text(json.dumps(record))
    with pytest.raises(registry.ModelError, match="not an HDF5 file"):
        registry.load_model_info(str(planted))
    with pytest.raises(registry.ModelError, match="not an HDF5 file"):
        load_classifier(registry.info_from_record(str(planted), record))
    assert not sentinel.exists()


def test_a_first_model_must_pass_the_quality_floor_and_a_later_one_the_current_model():
    from pipeline.retrain import promotion_decision

    weak, fair, good = {"macro_f1": 0.25}, {"macro_f1": 0.85}, {"macro_f1": 0.9}
    assert promotion_decision(weak, None, 0.8)[0] is False
    assert "below the floor" in promotion_decision(weak, None, 0.8)[1]
    assert promotion_decision(fair, None, 0.8)[0] is True
    assert promotion_decision(fair, good, 0.8)[0] is False
    assert promotion_decision(good, fair, 0.8)[0] is True
