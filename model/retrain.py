"""Retraining end to end: labelled folders in, a candidate model and a promotion decision in the registry out.

Steps, in order: list the labelled images (:mod:`model.data`), read and preprocess them into a Ray Dataset, group
near-duplicates and split train/validation by group (:mod:`model.dedup`), train with Ray Train
(:mod:`model.train`), evaluate the candidate and the registry's current model on the same validation images
(:mod:`model.evaluate`), write the candidate, and promote it only if its validation macro-F1 is not worse.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time

import numpy as np
import ray

from infra import storage
from model import registry
from model.architecture import ArchitectureConfig, build_classifier
from model.card import write_model_card
from model.data import IMAGE, LABEL, TARGET, THUMBNAIL, URI, list_labelled_images, load_labelled_dataset
from model.dedup import DEFAULT_SIMILARITY, group_near_duplicates, grouped_split
from model.evaluate import evaluate_predictions, write_evaluation
from model.predict import ProbabilityPredictor
from model.preprocessing import PreprocessConfig
from model.train import BEST_WEIGHTS, TrainConfig, train_classifier

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    data: str
    output: str
    tumor_data: tuple[str, ...] = ()
    validation_fraction: float = 0.15
    duplicate_similarity: float = DEFAULT_SIMILARITY
    split_seed: int = 0
    architecture: ArchitectureConfig = ArchitectureConfig()
    preprocessing: PreprocessConfig = PreprocessConfig()
    training: TrainConfig = TrainConfig()
    version: str | None = None


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


def split_by_groups(dataset: ray.data.Dataset, config: RetrainConfig):
    """Train and validation datasets that never share a near-duplicate group, and a summary of the split."""
    # sorted, so the split depends only on the data and the seed, never on the order Ray returned the blocks in
    table = dataset.select_columns([URI, LABEL, THUMBNAIL]).to_pandas().sort_values(URI, ignore_index=True)
    groups = group_near_duplicates(np.stack(table[THUMBNAIL].to_numpy()), config.duplicate_similarity)
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
    train = dataset.filter(lambda row: row[URI] not in validation_uris).drop_columns([THUMBNAIL]).materialize()
    validation = dataset.filter(lambda row: row[URI] in validation_uris).drop_columns([THUMBNAIL]).materialize()
    return train, validation, summary


def validation_arrays(validation: ray.data.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = validation.select_columns([IMAGE, TARGET, LABEL]).to_numpy_refs()
    batches = [ray.get(ref) for ref in table]
    return (np.concatenate([b[IMAGE] for b in batches]), np.concatenate([b[TARGET] for b in batches]),
            np.concatenate([b[LABEL] for b in batches]).astype(str))


def evaluate_current(config: RetrainConfig, images, targets, labels) -> dict | None:
    """Validation metrics of the registry's current model on this run's validation images, if it has one."""
    if not registry.read_registry(config.output).get("current"):
        return None
    info = registry.load_model_info(config.output)
    if info.preprocessing != config.preprocessing:
        logger.warning("current model %s uses other preprocessing; comparing on this run's inputs", info.version)
    predictor = ProbabilityPredictor(registry.load_classifier(info))
    return evaluate_predictions(predictor(images), targets, labels)


def promotion_decision(candidate: dict, current: dict | None) -> tuple[bool, str]:
    if current is None:
        return True, "the registry has no current model"
    new, old = candidate["macro_f1"], current["macro_f1"]
    if new >= old:
        return True, f"validation macro-F1 {new:.4f} is not worse than the current model's {old:.4f}"
    return False, f"validation macro-F1 {new:.4f} is worse than the current model's {old:.4f}"


def retrain(config: RetrainConfig) -> RetrainOutcome:
    """Train a candidate and decide on its promotion; see the module docstring for the steps."""
    started = time.time()
    images = list_labelled_images(config.data, config.tumor_data)
    logger.info("labelled images: %d from %s (+%d tumor folders)", len(images), config.data, len(config.tumor_data))
    train, validation, split = split_by_groups(load_labelled_dataset(images, config.preprocessing), config)
    weights_dir, state = train_classifier(train, validation, config.architecture, config.training)
    model = build_classifier(config.architecture)
    model.load_weights(str(weights_dir / BEST_WEIGHTS))
    val_images, val_targets, val_labels = validation_arrays(validation)
    candidate_metrics = evaluate_predictions(ProbabilityPredictor(model)(val_images), val_targets, val_labels)
    current_metrics = evaluate_current(config, val_images, val_targets, val_labels)
    promoted, reason = promotion_decision(candidate_metrics, current_metrics)
    version = config.version or registry.new_version()
    candidate_uri = storage.join(config.output, version)
    training = {"seconds": round(time.time() - started, 1), "hardware": training_hardware(config.training),
                "config": dataclasses.asdict(config.training), "state": state, "split": dataclasses.asdict(split),
                "data": config.data, "tumor_data": list(config.tumor_data)}
    registry.save_model(model, candidate_uri, version, config.architecture, config.preprocessing,
                        {"validation_metrics": candidate_metrics, "training": training,
                         "parameters": int(model.count_params())})
    write_model_card(candidate_uri)
    write_evaluation(candidate_metrics, storage.join(candidate_uri, "validation"), f"{version} validation")
    registry.record_decision(config.output, version, promoted, reason)
    return RetrainOutcome(version, candidate_uri, promoted, reason, candidate_metrics, current_metrics, split, state)


def training_hardware(config: TrainConfig) -> str:
    resources = ray.cluster_resources()
    gpus = f", {int(resources['GPU'])} GPUs" if resources.get("GPU") else ""
    device = "one GPU" if config.use_gpu else f"{config.cpus_per_worker:g} CPUs"
    return (f"{config.num_workers} Ray Train worker(s) with {device} each, on a Ray cluster of "
            f"{int(resources.get('CPU', 0))} CPUs{gpus} ({platform.machine()}, no GPU used: {not config.use_gpu})")
