"""Ensembles (``ArchitectureConfig.members``, ``mirror_views``): one graph that averages its member networks over
the slice and its mirror, saved and loaded like any model, explained by Grad-CAM; a member from another split
refused, an ensemble reused as members network by network. Its ONNX export is checked where one is made: a
retraining run's ensemble (``test_training``) and the shipped ensemble (``test_onnx``)."""

import dataclasses

import numpy as np
import pytest

from model import registry
from model.architecture import (backbone_of, build_classifier, load_members, member_networks, members_of,
                                with_features)
from model.config import ArchitectureConfig, RetrainConfig
from model.gradcam import GradCam, NetworkGradCam, within_head
from model.predict import ProbabilityPredictor, load_classifier
from model.preprocessing import PreprocessConfig
from tests.conftest import ROOT

SIDE = 160  # the shipped network's input
NETWORK = ArchitectureConfig(head="bilstm")
ENSEMBLE = dataclasses.replace(NETWORK, members=2, mirror_views=True)


def network(seed: int):
    """A trained network (the shipped mri-bilstm-v2) whose softmax layer's kernel columns are rolled by ``seed``
    (0: as shipped): networks that answer differently, from real features."""
    built = load_classifier(registry.load_model_info(str(ROOT / "models" / "mri-bilstm-v2")))
    dense = built.get_layer("class_probabilities")
    dense.kernel.assign(np.roll(dense.kernel.numpy(), seed, axis=1))
    return built


@pytest.fixture(scope="module")
def ensemble():
    """(two different networks, the ensemble graph holding them, a few random slices)."""
    networks = [network(seed) for seed in (0, 1)]
    model = load_members(build_classifier(ENSEMBLE, SIDE), networks)
    images = np.random.default_rng(0).integers(0, 256, (6, SIDE, SIDE), dtype=np.uint8)
    return networks, model, images


def test_the_ensemble_averages_every_member_over_the_slice_and_its_mirror(ensemble):
    networks, model, images = ensemble
    mirrored = np.ascontiguousarray(images[:, :, ::-1])
    views = [ProbabilityPredictor(network)(view) for network in networks for view in (images, mirrored)]
    assert not np.allclose(views[0], views[2], atol=1e-2)  # two different networks, not one counted twice
    assert not np.allclose(views[0], views[1], atol=1e-2)  # the mirror is another view
    assert np.abs(ProbabilityPredictor(model)(images) - np.mean(views, axis=0)).max() < 1e-5
    assert len(members_of(model)) == 2 and model.count_params() == 2 * networks[0].count_params()


def test_without_the_mirror_the_ensemble_is_the_mean_of_its_members(ensemble):
    networks, _, images = ensemble
    plain = load_members(build_classifier(dataclasses.replace(ENSEMBLE, mirror_views=False), SIDE), networks)
    expected = np.mean([ProbabilityPredictor(network)(images) for network in networks], axis=0)
    assert np.abs(ProbabilityPredictor(plain)(images) - expected).max() < 1e-5


def test_an_ensemble_saves_loads_and_gives_back_its_member_networks(ensemble, tmp_path):
    networks, model, images = ensemble
    info = registry.save_model(model, str(tmp_path / "ensemble"), "ensemble", ENSEMBLE,
                               PreprocessConfig(image_size=SIDE))
    loaded = load_classifier(registry.load_model_info(str(tmp_path / "ensemble")))
    assert registry.load_model_info(info.uri).architecture == ENSEMBLE
    assert np.abs(ProbabilityPredictor(loaded)(images) - ProbabilityPredictor(model)(images)).max() < 1e-6
    for network, back in zip(networks, member_networks(loaded, ENSEMBLE, SIDE)):
        assert np.abs(ProbabilityPredictor(back)(images) - ProbabilityPredictor(network)(images)).max() < 1e-6


def test_the_unfamiliarity_features_are_the_first_members_on_the_slice_as_it_is(ensemble):
    networks, model, images = ensemble
    assert backbone_of(model) is backbone_of(members_of(model)[0])
    _, features = ProbabilityPredictor(model, features=True).with_features(images)
    _, first = ProbabilityPredictor(networks[0], features=True).with_features(images)
    assert features.shape == first.shape and np.abs(features - first).max() < 1e-5
    assert len(with_features(model).outputs) == 2


def test_grad_cam_of_an_ensemble_is_the_scaled_mean_of_its_members_maps_within_the_head(ensemble):
    networks, model, images = ensemble
    maps = GradCam(model, ENSEMBLE)(images)
    alone = within_head(np.mean([NetworkGradCam(network)(images) for network in networks], axis=0), images,
                        PreprocessConfig())
    assert maps.shape == images.shape and maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
    assert np.abs(maps - alone / alone.max(axis=(1, 2), keepdims=True)).max() < 1e-4


def test_a_member_trained_on_another_split_or_architecture_is_refused(tmp_path):
    from pipeline.retrain import SplitSummary, reuse_members

    split = SplitSummary(images=10, duplicate_groups=9, groups_with_duplicates=1, train_images=8, validation_images=2,
                         validation_by_label={"glioma": 2})
    config = RetrainConfig(data="labelled", output=str(tmp_path), architecture=ENSEMBLE,
                           preprocessing=PreprocessConfig(image_size=SIDE))
    training = {"data": "labelled", "tumor_data": [], "split": dataclasses.asdict(split), "config": {"seed": 4},
                "state": {}, "seconds": 1.0}
    network = build_classifier(NETWORK, SIDE)
    preprocessing = PreprocessConfig(image_size=SIDE)
    registry.save_model(network, str(tmp_path / "same"), "same", NETWORK, preprocessing, {"training": training})
    [(_, record)] = reuse_members(str(tmp_path / "same"), config, split)
    assert record["reused"] and record["version"] == "same" and record["seed"] == 4
    other_split = {**training, "split": {**training["split"], "validation_images": 3}}
    registry.save_model(network, str(tmp_path / "other"), "other", NETWORK, preprocessing, {"training": other_split})
    with pytest.raises(ValueError, match="other.*split differ"):
        reuse_members(str(tmp_path / "other"), config, split)
    pooling = build_classifier(ArchitectureConfig(head="pooling"), SIDE)
    registry.save_model(pooling, str(tmp_path / "pooling"), "pooling", ArchitectureConfig(head="pooling"),
                        preprocessing, {"training": training})
    with pytest.raises(ValueError, match="architecture differ"):
        reuse_members(str(tmp_path / "pooling"), config, split)


def test_an_ensemble_reused_as_members_gives_each_of_its_networks_and_keeps_their_starting_weights(tmp_path, ensemble):
    """``--member-model`` of an ensemble folder: its networks in order, each with its own training record; a model
    fine-tuned from another (``init_from``) on this run's data and split is a member like any other, and its record
    says what it started from."""
    from pipeline.retrain import SplitSummary, reuse_members

    networks, model, images = ensemble
    split = SplitSummary(images=10, duplicate_groups=9, groups_with_duplicates=1, train_images=8, validation_images=2,
                         validation_by_label={"glioma": 2})
    config = RetrainConfig(data="labelled", output=str(tmp_path), architecture=dataclasses.replace(ENSEMBLE, members=3),
                           preprocessing=PreprocessConfig(image_size=SIDE))
    training = {"data": "labelled", "tumor_data": [], "split": dataclasses.asdict(split), "init_from": "registry/v0",
                "members": [{"config": {"seed": seed}, "state": {"best_epoch": seed}, "seconds": 2.0}
                            for seed in (7, 8)]}
    registry.save_model(model, str(tmp_path / "pair"), "pair", ENSEMBLE, PreprocessConfig(image_size=SIDE),
                        {"training": training})
    reused = reuse_members(str(tmp_path / "pair"), config, split)
    assert [record["version"] for _, record in reused] == ["pair member 0", "pair member 1"]
    assert [record["seed"] for _, record in reused] == [7, 8]
    assert all(record["reused"] and record["init_from"] == "registry/v0" for _, record in reused)
    for (network, _), original in zip(reused, networks):
        assert np.abs(ProbabilityPredictor(network)(images) - ProbabilityPredictor(original)(images)).max() < 1e-6
    other_data = {**training, "tumor_data": ["more"]}
    registry.save_model(model, str(tmp_path / "more"), "more", ENSEMBLE, PreprocessConfig(image_size=SIDE),
                        {"training": other_data})
    with pytest.raises(ValueError, match="more.*training data differ"):
        reuse_members(str(tmp_path / "more"), config, split)


def test_a_model_trained_on_another_split_of_the_site_slices_cannot_start_a_run(tmp_path):
    """``--init-from`` a model trained on other hospitals' slices: its split of those must be this run's, or it may
    have trained on this run's site validation patients; a model trained without site data needs the base split
    alone."""
    from pipeline.retrain import SplitSummary, starting_weights

    sites = {"validation_by_source": {"lgg/HT glioma": 168, "lgg/HT notumor": 120}}
    split = SplitSummary(images=10, duplicate_groups=9, groups_with_duplicates=1, train_images=8, validation_images=2,
                         validation_by_label={"glioma": 2}, sites=sites)
    base = {key: value for key, value in dataclasses.asdict(split).items() if key != "sites"}
    older = {**base, "sites": {"validation_by_source": {"lgg/HT glioma": 136, "lgg/HT notumor": 137}}}
    preprocessing = PreprocessConfig(image_size=SIDE)
    network = build_classifier(NETWORK, SIDE)
    for name, training in (("base", {"data": "labelled", "tumor_data": [], "split": base}),
                           ("sites", {"data": "labelled", "tumor_data": [], "site_data": ["lgg"], "split": older})):
        registry.save_model(network, str(tmp_path / name), name, NETWORK, preprocessing, {"training": training})
    config = RetrainConfig(data="labelled", output=str(tmp_path), site_data=("lgg",), architecture=NETWORK,
                           preprocessing=preprocessing)
    weights = starting_weights(dataclasses.replace(config, init_from=str(tmp_path / "base")), split)
    assert len(weights) == 1 and len(weights[0]) == len(network.get_weights())
    with pytest.raises(ValueError, match="sites.*cannot start this training: its split differ"):
        starting_weights(dataclasses.replace(config, init_from=str(tmp_path / "sites")), split)
