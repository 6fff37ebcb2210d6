"""Ray Train: a real 2-worker data-parallel run on a few real images; loss falls, checkpoints restore (on another
number of workers), the registry records the promotion decision. The later runs take one worker with both CPUs, as
the job's defaults have it, and start from the first run's weights or checkpoints. Minutes, not hours: marked
slow."""

import dataclasses
import json
import pathlib

import numpy as np
import pytest

from model import registry
from model.ood import OodDetector
from model.architecture import build_classifier
from model.predict import ProbabilityPredictor, load_classifier, masked_crossentropy_numpy
from model.preprocessing import PreprocessConfig
from model.train import (AVERAGE_WEIGHTS, BEST_WEIGHTS, LATEST_WEIGHTS, OPTIMIZER_STATE, STATE_FILE,
                         train_classifier)
from pipeline.retrain import retrain, validation_arrays
from tests.conftest import SAMPLES
from tests.support.training import ARCHITECTURE, SIZE, worker_resources
from tests.support.training import small_retraining as config

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def first_run(tmp_path_factory, ray_local):
    output = tmp_path_factory.mktemp("retrain")
    return output, retrain(config(output, epochs=3, version="candidate-1", workers=2))


def test_two_workers_train_and_the_loss_falls(first_run):
    _, outcome = first_run
    losses = [epoch["train_loss"] for epoch in outcome.training_state["history"]]
    assert len(losses) == 3
    assert losses[-1] < losses[0]


def test_first_candidate_is_promoted_and_its_files_verify(first_run):
    output, outcome = first_run
    assert outcome.promoted and "no current model" in outcome.reason and "meets the floor" in outcome.reason
    info = registry.load_model_info(str(output / "registry"))
    assert info.version == "candidate-1"
    metadata = json.loads((output / "registry" / "candidate-1" / registry.METADATA_FILE).read_text())
    assert metadata["training"]["split"]["validation_images"] > 0
    assert (output / "registry" / "candidate-1" / "validation" / "metrics.json").exists()
    detector = OodDetector.for_model(info)  # fitted on the candidate's training images, verified by its sha256
    assert detector is not None and np.isfinite(detector.threshold)
    assert metadata["ood"]["training_images"] == metadata["training"]["split"]["train_images"]
    assert metadata["onnx"]["outputs"] == ["probabilities", "features"]


def test_a_second_candidate_gets_a_recorded_decision(first_run):
    """The second candidate reads its inputs at another size than the current model, and other hospitals' slices
    too: each model is evaluated on its own preprocessing, the images read again for the current model are matched
    to their sources, and the comparison is recorded."""
    output, _ = first_run
    other_size = config(output, epochs=1, version="candidate-2")
    other_size = dataclasses.replace(other_size, preprocessing=PreprocessConfig(image_size=SIZE - 32),
                                     site_data=(str(SAMPLES / "other-site"),), validation_fraction=0.5)
    outcome = retrain(other_size)
    assert outcome.current_metrics is not None and outcome.current_metrics["images"] == outcome.candidate_metrics["images"]
    mine, theirs = outcome.candidate_metrics["by_source"], outcome.current_metrics["by_source"]
    assert len(mine) >= 2 and set(mine) == set(theirs)
    for source in mine:  # the same images of each source, with the same labels, judged by both
        assert [mine[source][key] for key in ("images", "tumor_images")] == \
            [theirs[source][key] for key in ("images", "tumor_images")]
    history = registry.read_registry(str(output / "registry"))["history"]
    assert [entry["version"] for entry in history] == ["candidate-1", "candidate-2"]
    assert "macro-F1" in outcome.reason and history[-1]["promoted"] == outcome.promoted
    expected_current = "candidate-2" if outcome.promoted else "candidate-1"
    assert registry.read_registry(str(output / "registry"))["current"] == expected_current
    assert (output / "registry" / "candidate-2" / registry.WEIGHTS_FILE).exists()


def checkpoint_after(output: pathlib.Path, epochs: int) -> pathlib.Path:
    """The first run's checkpoint folder at ``epochs`` epochs (Ray Train keeps the last two of each run)."""
    found = [path for path in (output / "ray").rglob("checkpoint_*") if path.is_dir()
             if json.loads((path / STATE_FILE).read_text())["next_epoch"] == epochs]
    assert found, "the first run left no checkpoint after its last epoch"
    return found[0]


def test_a_run_resumes_from_a_checkpoint_with_its_optimizer_and_weight_average(first_run, ray_local):
    """What a later run, perhaps on another machine, needs to continue is in the checkpoint: the weights, the
    optimizer's moments and step, the weight average and its step, and the history. Two workers' checkpoint resumes
    on one. The resumed run's best weights are the ones whose validation loss it reports."""
    from model.data import list_labelled_images, load_labelled_dataset
    from pipeline.retrain import split_by_groups

    output, outcome = first_run
    checkpoint = checkpoint_after(output, 3)
    assert {AVERAGE_WEIGHTS, OPTIMIZER_STATE, BEST_WEIGHTS, LATEST_WEIGHTS} <= {p.name for p in checkpoint.iterdir()}
    with np.load(checkpoint / OPTIMIZER_STATE) as saved:
        assert len(saved.files) > 1 and np.abs(saved["v1"]).sum() > 0  # moments, not just the step count
    first = outcome.training_state
    assert first["average_steps"] == first["optimizer_step"] > 0
    assert all("raw_val_loss" in epoch for epoch in first["history"])  # the average's figures beside the raw ones
    cfg = config(output, epochs=4, version="unused")
    cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, resume_from=str(checkpoint),
                                                                 run_name="resumed"))
    images = list_labelled_images(cfg.data, cfg.tumor_data)
    train, validation, _ = split_by_groups(load_labelled_dataset(images, cfg.preprocessing), cfg)
    folder, state = train_classifier(train, validation, ARCHITECTURE, SIZE, cfg.training)
    steps_per_epoch = -(-train.count() // cfg.training.batch_size)  # one worker takes the whole batch
    assert state["resumed_at"] == [3] and len(state["history"]) == 4
    assert state["history"][:3] == first["history"]
    assert state["optimizer_step"] == state["average_steps"] == first["optimizer_step"] + steps_per_epoch
    model = build_classifier(ARCHITECTURE, SIZE)
    model.load_weights(str(folder / BEST_WEIGHTS))
    val_images, val_targets, _ = validation_arrays(validation)
    recomputed = masked_crossentropy_numpy(ProbabilityPredictor(model)(val_images), val_targets)
    assert np.isclose(recomputed, state["best_val_loss"], rtol=1e-4)


def test_a_candidate_is_quantized_to_int8_and_measured_against_float32(first_run):
    from model.quantize import quantize_and_attach

    output, _ = first_run
    folder = output / "registry" / "candidate-1"
    info = registry.load_model_info(str(folder))
    shipped = json.loads((folder / registry.METADATA_FILE).read_text()).get("onnx_int8")
    if shipped:  # the retraining run shipped it: its figures held, and its unfamiliarity threshold was refitted
        assert shipped["measured"]["metrics_hold"]
        assert ("ood_threshold" in shipped) == ("ood" in info.metadata)
        judged = shipped["held_out_agreement"]  # judged on held-out sets as it shipped: auto runs it only if earned
        assert {"sample archive", "pydicom non-MR images", "validation, gamma 0.5-2"} <= set(judged["sets"])
        from model.backends import ONNX, ONNX_INT8, auto_backend
        assert auto_backend(info, use_gpu=False) == (ONNX_INT8 if judged["earns_default"] else ONNX)
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (24, SIZE, SIZE), dtype=np.uint8)
    targets = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 24)]
    kept = (folder / registry.ONNX_INT8_FILE).read_bytes() if shipped else None
    _, report = quantize_and_attach(info, images, images, targets, write=False)
    assert report["int8"]["bytes"] < 0.7 * report["float32"]["bytes"]  # int8 weights: about a quarter, plus graph
    assert set(report["int8"]) >= {"accuracy", "macro_f1", "tumor_sensitivity", "specificity",
                                   "images_per_second_1_thread", "validation_marked_unfamiliar"}
    assert isinstance(report["metrics_hold"], bool)
    assert ((folder / registry.ONNX_INT8_FILE).read_bytes() if shipped else None) == kept  # write=False wrote nothing
    assert shipped or not (folder / registry.ONNX_INT8_FILE).exists()
    if "ood" in info.metadata:  # refitted on the int8 features at the detector's quantile
        from infra import storage
        from model.quantize import quantized, refitted_ood_threshold

        refitted = refitted_ood_threshold(info, quantized(storage.read_bytes(info.onnx_uri), images), images)
        assert refitted["ood_threshold"] > 0 and 0 <= refitted["ood_validation_marked"] <= 0.05


def test_an_ensemble_candidate_reuses_a_trained_member_trains_the_next_and_averages_them(first_run):
    """``--members 2 --member-model candidate-1``: the first run's network is reused (same data and split), the
    second member is trained here with the next seed and kept as its own folder, and the candidate's one graph
    averages both over the slice and its mirror; its export, detector and card follow."""
    output, _ = first_run
    base = config(output, epochs=1, version="ensemble-1")
    ensemble = dataclasses.replace(base, architecture=dataclasses.replace(ARCHITECTURE, members=2, mirror_views=True),
                                   member_models=(str(output / "registry" / "candidate-1"),))
    retrain(ensemble)
    folder = output / "registry" / "ensemble-1"
    metadata = json.loads((folder / registry.METADATA_FILE).read_text())
    members = metadata["training"]["members"]
    assert [member["reused"] for member in members] == [True, False]
    assert members[0]["version"] == "candidate-1" and members[1]["version"] == "ensemble-1-member1"
    assert members[1]["seed"] == base.training.seed + 1 and members[1]["state"]["next_epoch"] == 1
    trained = registry.load_model_info(str(output / "registry" / "ensemble-1-member1"))
    assert trained.architecture == ARCHITECTURE and trained.metadata["member_of"] == "ensemble-1"
    info = registry.load_model_info(str(folder))
    assert info.architecture.members == 2 and info.architecture.mirror_views
    images = np.random.default_rng(5).integers(0, 256, (8, SIZE, SIZE), dtype=np.uint8)
    mirrored = np.ascontiguousarray(images[:, :, ::-1])
    networks = [load_classifier(registry.load_model_info(str(output / "registry" / name)))
                for name in ("candidate-1", "ensemble-1-member1")]
    expected = np.mean([ProbabilityPredictor(network)(view) for network in networks for view in (images, mirrored)],
                       axis=0)
    assert np.abs(ProbabilityPredictor(load_classifier(info))(images) - expected).max() < 1e-5
    assert {"member 0", "member 1", "member 0 with its mirror", "members without the mirror",
            "the model"} <= set(metadata["ensemble"])
    assert metadata["onnx"]["parity_max_abs_difference"] <= 1e-4 and OodDetector.for_model(info) is not None
    card = (folder / "MODEL_CARD.md").read_text()
    assert "## Ensemble: what each part adds" in card and "`ensemble-1-member1`, trained in this run" in card


@pytest.fixture(scope="module")
def site_study(first_run):
    """``--site-data samples/other-site --leave-out-site HT --init-from candidate-1 --tumor-map-weight 1``, augmented:
    one worker with both CPUs trains the network and its tumor-map output from the first run's weights."""
    output, _ = first_run
    study = dataclasses.replace(config(output, epochs=1, version="site-study"),
                                site_data=(str(SAMPLES / "other-site"),), leave_out_site="HT",
                                init_from=str(output / "registry" / "candidate-1"))
    study = dataclasses.replace(study, training=dataclasses.replace(study.training, tumor_map_weight=1.0, augment=True,
                                                                    run_name="site-study"))
    return study, retrain(study)


def test_another_hospitals_slices_train_from_the_current_weights_and_a_left_out_site_is_judged(first_run, site_study):
    """The site's slices join training from the first run's weights (its base split is this run's, so no
    validation image is one it trained on), site HT's patients stay out of both sides and are judged per sequence,
    validation is reported per source, and the study is never promoted."""
    output, _ = first_run
    _, outcome = site_study
    assert not outcome.promoted and "leave-one-site-out" in outcome.reason
    metadata = json.loads((output / "registry" / "site-study" / registry.METADATA_FILE).read_text())
    left_out = metadata["left_out_site"]
    assert left_out["site"] == "HT" and left_out["images"] == 10 and left_out["patients"] == 2
    assert set(left_out["by_sequence"]) == {"other-site/HT flair", "other-site/HT t1pre"}
    assert 0 <= left_out["overall"]["specificity"] <= 1 and left_out["overall"]["no_tumor_images"] == 4
    sites = metadata["training"]["split"]["sites"]
    assert sites["left_out"] == {"site": "HT", "images": 10, "patients": 2}
    assert sites["train_images"] + sites["validation_images"] == 10  # site DU's ten slices, by whole patients
    assert sites["validation_images"] in (0, 5, 10)
    assert metadata["training"]["init_from"].endswith("candidate-1")
    assert "samples/labelled" in metadata["validation_metrics"]["by_source"]
    assert registry.read_registry(str(output / "registry"))["current"] != "site-study"
    assert left_out["by_level"] and all(name.startswith("other-site/HT ") for name in left_out["by_level"])
    # judged again from the saved model, as tools.judge_site judges a run recorded before a figure existed
    from tools.judge_site import judge

    again = judge(str(output / "registry" / "site-study"), str(SAMPLES / "other-site"), "HT", None)
    assert again["patients"] == 2 and again["images"] == 10
    for figures, recorded in [(again["overall"], left_out["overall"]),
                              *((again["by_level"][name], left_out["by_level"][name]) for name in left_out["by_level"])]:
        for measure in ("sensitivity", "specificity", "marked_unfamiliar"):
            assert (figures[measure] is None) == (recorded[measure] is None)
            if recorded[measure] is not None:
                assert figures[measure] == pytest.approx(recorded[measure], abs=1e-3)


def test_a_network_learns_tumor_maps_beside_its_classes_and_two_workers_resume_it(first_run, site_study, ray_local):
    """``--tumor-map-weight``: the site study learned the masks' tumor maps beside the classes (augmented with their
    slices); what it kept, exported and described is the plain network. Two workers resume its checkpoint, and the
    resumed run's kept network is the one whose validation loss it records."""
    from model.data import list_training_images, load_labelled_dataset
    from pipeline.retrain import split_by_groups

    output, _ = first_run
    study, outcome = site_study
    first = outcome.training_state
    assert 0 < first["history"][0]["train_tumor_map_loss"] < first["history"][0]["train_loss"]
    info = registry.load_model_info(str(output / "registry" / "site-study"))
    assert len(load_classifier(info).outputs) == 1  # the tumor-map output was for training only
    assert "times the tumor map's cross-entropy" in (output / "registry" / "site-study" / "MODEL_CARD.md").read_text()
    images = list_training_images(study.data, study.tumor_data, study.site_data)
    assert sum(bool(image.mask) for image in images) == 12
    train, validation, _ = split_by_groups(load_labelled_dataset(images, study.preprocessing), study, images)
    checkpoint = next(path for path in (output / "ray" / "site-study").rglob("checkpoint_*") if path.is_dir())
    resumed = dataclasses.replace(study.training, epochs=2, resume_from=str(checkpoint), run_name="maps-resumed",
                                  **worker_resources(2))
    folder, state = train_classifier(train, validation, ARCHITECTURE, SIZE, resumed)
    assert state["resumed_at"] == [1] and len(state["history"]) == 2
    assert all(np.isfinite(epoch["train_tumor_map_loss"]) for epoch in state["history"])
    model = build_classifier(ARCHITECTURE, SIZE)
    model.load_weights(str(folder / BEST_WEIGHTS))
    val_images, val_targets, _ = validation_arrays(validation)
    recomputed = masked_crossentropy_numpy(ProbabilityPredictor(model)(val_images), val_targets)
    assert np.isclose(recomputed, state["best_val_loss"], rtol=1e-4)
