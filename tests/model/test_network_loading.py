"""Loading an ensemble's member networks straight from its weights file (what the heat maps explain) gives the very
networks the built ensemble holds, without building the ensemble's graph; other weights are refused."""

import numpy as np
import pytest

from model import registry
from model.architecture import member_networks
from model.predict import load_classifier, load_networks
from tests.conftest import ROOT


@pytest.mark.slow
def test_an_ensembles_members_load_as_the_built_ensemble_holds_them():
    info = registry.load_model_info(str(ROOT / "models" / "mri-bilstm-ensemble-v3"))
    built = member_networks(load_classifier(info), info.architecture, info.preprocessing.image_size)
    loaded = load_networks(info, info.weights_sha256)
    assert len(loaded) == len(built) == info.architecture.members
    side = info.preprocessing.image_size
    images = np.random.default_rng(0).integers(0, 256, (3, side, side), dtype=np.uint8)
    for expected, network in zip(built, loaded):
        assert all(np.array_equal(a, b) for a, b in zip(expected.get_weights(), network.get_weights()))
        np.testing.assert_array_equal(expected(images).numpy(), network(images).numpy())
    with pytest.raises(registry.ModelError, match="refusing"):
        load_networks(info, "0" * 64)
