"""Retraining a classifier: the whole run, stage by stage.

1. List the labelled images (``model.data``); unusable data stops the run before anything is written.
2. Read and preprocess them into a Ray Dataset, through the decoder scoring uses (``model.decode``).
3. Group near-duplicates and split train/validation by whole groups (``model.dedup``).
4. Train with Ray Train (``model.train``): one network, or for an ensemble (``ArchitectureConfig.members``) each
   member in turn with its own seed (members already trained on this split may be reused instead, and each member
   trained here is kept as a model folder beside the candidate, so a run that stops between members loses none).
5. Evaluate the candidate, and the registry's current model, on the same validation images, each model with its
   own preprocessing (``model.evaluate``); calibrate the candidate (temperature scaling) and choose its flag
   threshold for tumor sensitivity >= 0.98 on that split (``model.calibration``).
6. Write the candidate (weights, ``model.json`` with its calibration and operating point, its ONNX export, its
   out-of-distribution detector fitted on the training images (``model.ood``), card, figures: confusion matrix,
   ROC curves, reliability diagram, training curves) and record the promotion decision in the registry:
   promoted only if its validation macro-F1 is not worse.
A failure after step 3 raises ``RunFailedError``: the registry's ``current`` model is unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import platform
import time

import numpy as np
import pandas as pd
import ray

from infra import storage
from model import registry
from model.architecture import build_classifier, load_members
from model.card import write_model_card
from model.config import RetrainConfig, TrainConfig
from model.data import (IMAGE, LABEL, TARGET, THUMBNAIL, URI, LabelledImage, list_labelled_images,
                        load_labelled_dataset)
from model.dedup import group_near_duplicates, grouped_split
from model.calibration import TARGET_SENSITIVITY, apply_temperature, fit_temperature, operating_threshold
from model.evaluate import (CURVES_FILE, RELIABILITY_FILE, evaluate_predictions, reliability_png, training_curves_png,
                            write_evaluation)
from model.onnx_export import export_and_attach
from model.heldout import held_out_sets
from model.quantize import figures, quantize_and_attach
from model.ood import OOD_FILE, fit_and_describe
from model.predict import ProbabilityPredictor, load_classifier
from model.train import BEST_WEIGHTS, train_classifier
from pipeline.errors import RunFailedError, describe_failure

logger = logging.getLogger(__name__)

ONNX_CHECK_IMAGES = 64  # validation images the ONNX export must reproduce TensorFlow's probabilities on


@dataclasses.dataclass(frozen=True)
class SplitSummary:
    images: int
    duplicate_groups: int
    groups_with_duplicates: int
    train_images: int
    validation_images: int
    validation_by_label: dict


@dataclasses.dataclass(frozen=True)
class RetrainOutcome:
    version: str
    candidate_uri: str
    promoted: bool
    reason: str
    candidate_metrics: dict
    current_metrics: dict | None
    split: SplitSummary
    training_state: dict


def near_duplicate_groups(dataset: ray.data.Dataset, config: RetrainConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """The images' URIs and labels, sorted by URI, and each one's near-duplicate group (sorted, so splits depend only
    on the data and the seed, never on the order Ray returned the blocks in)."""
    table = dataset.select_columns([URI, LABEL, THUMBNAIL]).to_pandas().sort_values(URI, ignore_index=True)
    groups = group_near_duplicates(np.stack(table[THUMBNAIL].to_numpy()), config.duplicate_similarity)
    return table.drop(columns=[THUMBNAIL]), groups


def split_by_uris(dataset: ray.data.Dataset, held_out: set) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """(the images outside ``held_out``, the images in it), thumbnails dropped, materialized."""
    train = dataset.filter(lambda row: row[URI] not in held_out).drop_columns([THUMBNAIL]).materialize()
    validation = dataset.filter(lambda row: row[URI] in held_out).drop_columns([THUMBNAIL]).materialize()
    return train, validation


def split_by_groups(dataset: ray.data.Dataset, config: RetrainConfig):
    """Train and validation datasets that never share a near-duplicate group, and a summary of the split."""
    table, groups = near_duplicate_groups(dataset, config)
    labels = table[LABEL].to_numpy().astype(str)
    in_validation = grouped_split(groups, labels, config.validation_fraction, config.split_seed)
    validation_uris = set(table[URI][in_validation])
    sizes = np.bincount(groups)
    summary = SplitSummary(
        images=len(table), duplicate_groups=int(len(sizes)), groups_with_duplicates=int((sizes > 1).sum()),
        train_images=int((~in_validation).sum()), validation_images=int(in_validation.sum()),
        validation_by_label={str(k): int(v) for k, v in zip(*np.unique(labels[in_validation], return_counts=True))})
    logger.info("near-duplicate groups: %d for %d images (%d groups hold more than one image)",
                summary.duplicate_groups, summary.images, summary.groups_with_duplicates)
    return (*split_by_uris(dataset, validation_uris), summary)


def validation_arrays(validation: ray.data.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = validation.select_columns([IMAGE, TARGET, LABEL]).to_numpy_refs()
    batches = [ray.get(ref) for ref in table]
    return (np.concatenate([b[IMAGE] for b in batches]), np.concatenate([b[TARGET] for b in batches]),
            np.concatenate([b[LABEL] for b in batches]).astype(str))


def evaluate_current(config: RetrainConfig, validation: ray.data.Dataset, images, targets,
                     labels) -> dict | None:
    """Validation metrics of the registry's current model on this run's validation images, if it has one; a model
    with other preprocessing (another input size, say) reads them through its own."""
    if not registry.read_registry(config.output).get("current"):
        return None
    info = registry.load_model_info(config.output)
    if info.preprocessing != config.preprocessing:
        logger.info("current model %s has its own preprocessing: validation images read again with it", info.version)
        images, targets, labels = validation_arrays(reload_validation(validation, info.preprocessing))
    predictor = ProbabilityPredictor(load_classifier(info), temperature=info.temperature)
    return evaluate_predictions(predictor(images), targets, labels, info.threshold)


def reload_validation(validation: ray.data.Dataset, preprocessing) -> ray.data.Dataset:
    """The validation files read again with other preprocessing (a multi-frame file gives all its frames)."""
    rows = validation.select_columns([URI, LABEL]).take_all()
    files = dict.fromkeys((str(row[URI]).split("#frame=")[0], str(row[LABEL])) for row in rows)
    return load_labelled_dataset([LabelledImage(uri, label) for uri, label in files], preprocessing)


def promotion_decision(candidate: dict, current: dict | None, min_macro_f1: float) -> tuple[bool, str]:
    """Promote a first model only above the quality floor, a later one only if it is not worse than the current."""
    new = candidate["macro_f1"]
    if current is None:
        if new < min_macro_f1:
            return False, (f"validation macro-F1 {new:.4f} is below the floor of {min_macro_f1:.2f} for a first model; "
                           f"it stays a candidate")
        return True, f"the registry has no current model and validation macro-F1 {new:.4f} meets the floor"
    old = current["macro_f1"]
    if new >= old:
        return True, f"validation macro-F1 {new:.4f} is not worse than the current model's {old:.4f}"
    return False, f"validation macro-F1 {new:.4f} is worse than the current model's {old:.4f}"


def retrain(config: RetrainConfig, images: list[LabelledImage] | None = None) -> RetrainOutcome:
    """Train a candidate and decide on its promotion; see the module docstring for the stages. ``images`` is the
    listing of stage 1 when the caller has made it already (the job does, before Ray starts)."""
    started = time.time()
    images = images if images is not None else list_labelled_images(config.data, config.tumor_data)
    logger.info("labelled images: %d from %s (+%d tumor folders)", len(images), config.data, len(config.tumor_data))
    dataset = load_labelled_dataset(images, config.preprocessing, cache=config.cache)
    train, validation, split = split_by_groups(dataset, config)
    try:
        return train_and_decide(config, train, validation, split, started)
    except Exception as error:
        raise RunFailedError(f"retraining failed: {describe_failure(error)}; the registry's current model is "
                             f"unchanged") from error


def calibrated_evaluation(raw: np.ndarray, targets: np.ndarray, labels: np.ndarray) -> tuple[dict, dict, np.ndarray]:
    """Fit the temperature and choose the operating point on validation; return the metrics of the calibrated
    probabilities at that threshold, the ``calibration`` and ``operating_point`` records, and the probabilities."""
    temperature = fit_temperature(raw, targets)
    calibrated = apply_temperature(raw, temperature)
    threshold = operating_threshold(calibrated, targets)
    metrics = evaluate_predictions(calibrated, targets, labels, threshold)
    before = evaluate_predictions(raw, targets, labels)
    tumor, unknown = metrics["tumor_vs_no_tumor"], metrics.get("unknown_type_tumor_sensitivity", {})
    records = {
        "calibration": {"method": "temperature scaling on the validation split", "temperature": temperature,
                        "expected_calibration_error_before": before["expected_calibration_error"],
                        "expected_calibration_error_after": metrics["expected_calibration_error"]},
        "operating_point": {"threshold": threshold, "target_sensitivity": TARGET_SENSITIVITY,
                            "chosen_on": "validation tumors, typed and of unknown type each reaching the target; "
                                         "never above 0.5",
                            "validation_sensitivity": tumor["sensitivity"],
                            "validation_specificity": tumor["specificity"],
                            "unknown_type_tumor_sensitivity": unknown.get("sensitivity"),
                            "at_threshold_0.5": before["tumor_vs_no_tumor"]},
    }
    return metrics, records, calibrated


def write_candidate_figures(folder: str, version: str, raw: np.ndarray, calibrated: np.ndarray, targets: np.ndarray,
                            metrics: dict, history: list[dict]) -> None:
    """The pictures people look at: confusion matrix, ROC curves, reliability diagram, training curves."""
    write_evaluation(metrics, folder, f"{version} validation", calibrated, targets)
    storage.write_bytes(storage.join(folder, RELIABILITY_FILE),
                        reliability_png(raw, calibrated, targets, f"{version} validation"))
    storage.write_bytes(storage.join(folder, CURVES_FILE), training_curves_png(history, f"{version} training"))


def reuse_member(uri: str, config: RetrainConfig, split: SplitSummary) -> tuple[object, dict]:
    """A network trained earlier, as a member of this run's ensemble: refused unless it has the members' architecture
    and preprocessing and was trained on this run's data and split (else its validation figures would count images
    it trained on)."""
    info = registry.load_model_info(uri)
    training = info.metadata.get("training", {})
    problems = [what for what, same in (
        ("architecture", info.architecture == config.architecture.member()),
        ("preprocessing", info.preprocessing == config.preprocessing),
        ("training data", (training.get("data"), list(training.get("tumor_data", ())))
         == (config.data, list(config.tumor_data))),
        ("split", training.get("split") == dataclasses.asdict(split))) if not same]
    if problems:
        raise ValueError(f"model {info.version} at {uri} cannot be a member of this ensemble: its "
                         f"{', '.join(problems)} differ from this run's")
    logger.info("member %s reused from %s", info.version, uri)
    return load_classifier(info), member_record(training.get("config", {}), training.get("state", {}),
                                                training.get("seconds"), info.version, reused=True)


def member_record(config: dict, state: dict, seconds: float | None, version: str | None, reused: bool) -> dict:
    return {"version": version, "reused": reused, "seed": config.get("seed"), "seconds": seconds, "config": config,
            "state": state}


def train_members(config: RetrainConfig, train: ray.data.Dataset, validation: ray.data.Dataset,
                  split: SplitSummary, version: str) -> list[tuple[object, dict]]:
    """The model's networks and their records: reused members first, then the rest trained one after another
    (seed ``training.seed + index``; ``--resume-from`` continues the first one trained here). In an ensemble each
    trained member is written at once as a model folder ``<version>-member<index>`` beside the candidate."""
    members = [reuse_member(uri, config, split) for uri in config.member_models]
    network, side = config.architecture.member(), config.preprocessing.image_size
    for index in range(len(members), config.architecture.members):
        started = time.time()
        training = dataclasses.replace(
            config.training, seed=config.training.seed + index,
            resume_from=config.training.resume_from if index == len(config.member_models) else None,
            run_name=f"{config.training.run_name}-member{index}"
            if config.training.run_name and config.architecture.members > 1 else config.training.run_name)
        weights_dir, state = train_classifier(train, validation, network, side, training)
        model = build_classifier(network, side)
        model.load_weights(str(weights_dir / BEST_WEIGHTS))
        record = member_record(dataclasses.asdict(training), state, round(time.time() - started, 1), None, False)
        if config.architecture.members > 1:
            record["version"] = f"{version}-member{index}"
            registry.save_model(model, storage.join(config.output, record["version"]), record["version"], network,
                                config.preprocessing,
                                {"member_of": version, "parameters": int(model.count_params()),
                                 "training": {**training_record(config, split, record["seconds"]),
                                              "config": record["config"], "state": state}})
            logger.info("member %d of %d trained: %s", index + 1, config.architecture.members, record["version"])
        members.append((model, record))
    return members


def assemble(config: RetrainConfig, networks: list) -> object:
    """The candidate's graph: the one network, or the ensemble's averaging graph holding every member."""
    if not config.architecture.is_ensemble:
        return networks[0]
    return load_members(build_classifier(config.architecture, config.preprocessing.image_size), networks)


def ensemble_figures(config: RetrainConfig, networks: list, raw: np.ndarray, images: np.ndarray,
                     targets: np.ndarray) -> dict:
    """What each part of an ensemble adds, on validation, before calibration (accuracy, macro-F1, recall per class
    and the tumor figures at 0.5): each member alone, each with its mirror, the members averaged without the mirror,
    and the whole model (``raw``: its probabilities, already computed)."""
    predictors = [ProbabilityPredictor(network) for network in networks]
    alone = [predict(images) for predict in predictors]
    parts = {f"member {index}": probabilities for index, probabilities in enumerate(alone)}
    if config.architecture.mirror_views:
        mirrored = np.ascontiguousarray(images[:, :, ::-1])
        for index, predict in enumerate(predictors):
            parts[f"member {index} with its mirror"] = (alone[index] + predict(mirrored)) / 2
        if len(networks) > 1:
            parts["members without the mirror"] = np.mean(alone, axis=0)
    parts["the model"] = raw
    return {name: figures(probabilities, targets, 0.5) for name, probabilities in parts.items()}


def training_record(config: RetrainConfig, split: SplitSummary, seconds: float) -> dict:
    return {"seconds": seconds, "hardware": training_hardware(config.training), "split": dataclasses.asdict(split),
            "data": config.data, "tumor_data": list(config.tumor_data)}


def train_and_decide(config: RetrainConfig, train: ray.data.Dataset, validation: ray.data.Dataset,
                     split: SplitSummary, started: float) -> RetrainOutcome:
    """Stages 4-6."""
    version = config.version or registry.new_version()
    members = train_members(config, train, validation, split, version)
    networks, records = [network for network, _ in members], [record for _, record in members]
    model = assemble(config, networks)
    val_images, val_targets, val_labels = validation_arrays(validation)
    raw = ProbabilityPredictor(model)(val_images)
    candidate_metrics, calibration, calibrated = calibrated_evaluation(raw, val_targets, val_labels)
    current_metrics = evaluate_current(config, validation, val_images, val_targets, val_labels)
    promoted, reason = promotion_decision(candidate_metrics, current_metrics, config.min_macro_f1)
    candidate_uri = storage.join(config.output, version)
    state = records[0]["state"]  # the first member's training: the card's curves and per-epoch table
    training = {**training_record(config, split, round(time.time() - started, 1)), "config": records[0]["config"],
                "state": state}
    extra = {}
    if config.architecture.is_ensemble:
        training["members"] = records
        extra["ensemble"] = ensemble_figures(config, networks, raw, val_images, val_targets)
    saved = registry.save_model(model, candidate_uri, version, config.architecture, config.preprocessing,
                                {"validation_metrics": candidate_metrics, "training": training,
                                 "parameters": int(model.count_params()), **calibration, **extra})
    saved = export_and_attach(model, saved, val_images[:ONNX_CHECK_IMAGES])  # ONNX Runtime's backend, parity-checked
    train_images = validation_arrays(train)[0]
    saved = attach_ood(model, saved, train_images, val_images, val_labels)
    attach_int8(saved, train_images, val_images, val_targets, config.held_out)
    write_candidate_figures(storage.join(candidate_uri, "validation"), version, raw, calibrated, val_targets,
                            candidate_metrics, state["history"])
    write_model_card(candidate_uri)
    registry.record_decision(config.output, version, promoted, reason)
    return RetrainOutcome(version, candidate_uri, promoted, reason, candidate_metrics, current_metrics, split, state)


def attach_ood(model, info: registry.ModelInfo, train_images: np.ndarray, val_images: np.ndarray,
               val_labels: np.ndarray) -> registry.ModelInfo:
    """Fit the candidate's out-of-distribution detector (``model.ood``) on its training images, with the threshold
    on validation, and store it beside the weights; ``tools.fit_ood`` measures it on images that are not brain MRI."""
    predictor = ProbabilityPredictor(model, features=True)
    _, features = predictor.with_features(train_images)
    _, validation = predictor.with_features(val_images)
    detector, record = fit_and_describe(features, validation, val_labels)
    logger.info("out-of-distribution threshold %.2f marks %.1f%% of the validation images", detector.threshold,
                100 * record["validation_marked"])
    return registry.attach_file(info, "ood", OOD_FILE, detector.to_bytes(), record)


def attach_int8(info: registry.ModelInfo, train_images: np.ndarray, val_images: np.ndarray,
                val_targets: np.ndarray, held_out: tuple[str, ...] = ()) -> registry.ModelInfo:
    """The candidate's int8 export (``model.quantize``), shipped when its validation figures hold, with its verdict
    on the held-out sets (``model.heldout``; ``held_out`` folders each a set); an optional speed-up, so a failure to
    quantize is logged and the candidate goes on without it."""
    try:
        sets = held_out_sets(info.preprocessing, val_images,
                             {f"held-out folder {pathlib.PurePath(folder).name}": folder for folder in held_out})
        return quantize_and_attach(info, train_images, val_images, val_targets, held_out=sets)[0]
    except Exception as error:  # onnxruntime's quantizer on a graph it cannot handle: float32 still serves
        logger.warning("int8 quantization of %s failed (%s: %s); it ships without model.int8.onnx", info.version,
                       type(error).__name__, error)
        return info


def training_hardware(config: TrainConfig) -> str:
    resources = ray.cluster_resources()
    gpus = f", {int(resources['GPU'])} GPUs" if resources.get("GPU") else ""
    device = "one GPU" if config.use_gpu else f"{config.cpus_per_worker:g} CPUs"
    return (f"{config.num_workers} Ray Train worker(s) with {device} each, on a Ray cluster of "
            f"{int(resources.get('CPU', 0))} CPUs{gpus} ({platform.machine()}, no GPU used: {not config.use_gpu})")
