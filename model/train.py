"""Data-parallel training with Ray Train: preprocessed Ray Datasets in, a checkpoint with the best weights out.

``train_classifier`` runs a ``TensorflowTrainer`` whose workers train one model under
``MultiWorkerMirroredStrategy`` on their shard of the training set. Every epoch each worker validates on the
whole validation set with a plain copy of the weights (the running weight average, ``model.averaging``, when
``ema_decay`` is set, with the raw weights' figures beside it), and reports metrics plus a checkpoint (latest, best
and averaged weights, the optimizer's moments, and the early-stopping state) through ``ray.train.report``. A
restarted worker group resumes from the latest checkpoint (the state records each epoch it resumed at); training
stops early when validation loss has not improved for ``patience`` epochs. The same code runs on one CPU or on many
GPUs: ``num_workers`` and ``use_gpu`` choose.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import tempfile
import time

import numpy as np
import ray
import ray.train

from model.tensorflow_runtime import tf  # first: TensorFlow is imported quietly before Ray Train imports it

from ray.train.tensorflow import TensorflowTrainer  # noqa: E402

from model.architecture import TUMOR_MAP_OUTPUT, build_classifier, build_tumor_map_trainer, compile_classifier
from model.augment import AugmentConfig, augment_batch, healthy_mirror_batch
from model.averaging import WeightAverage
from model.config import ArchitectureConfig, TrainConfig
from model.data import IMAGE, MAP_KNOWN, TARGET, TUMOR_MAP, WEIGHT
from model.labels import NO_TUMOR, target_mask
from model.metrics import classification_metrics
from model.predict import ProbabilityPredictor, configure_tensorflow, masked_crossentropy_numpy

LATEST_WEIGHTS = "latest.weights.h5"
BEST_WEIGHTS = "best.weights.h5"
AVERAGE_WEIGHTS = "average.weights.h5"  # the running weight average (model.averaging), when training keeps one
OPTIMIZER_STATE = "optimizer.npz"  # the optimizer's variables: step count and moment estimates
STATE_FILE = "state.json"

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainingState:
    """Early-stopping bookkeeping carried in every checkpoint."""

    next_epoch: int = 0
    best_val_loss: float = float("inf")
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    history: list = dataclasses.field(default_factory=list)
    resumed_at: list = dataclasses.field(default_factory=list)  # next_epoch of each checkpoint training resumed from
    optimizer_step: int = 0  # where the learning-rate schedule stands, restored with the weights
    average_steps: int = 0  # updates the weight average has taken


@dataclasses.dataclass
class Shard:
    """A worker's whole shard as numpy: read once, reused every epoch."""

    images: np.ndarray
    targets: np.ndarray
    weights: np.ndarray | None = None  # draw weights, when sources are balanced
    tumor_maps: np.ndarray | None = None  # TUMOR_MAP and MAP_KNOWN, when read (training with tumor maps)
    maps_known: np.ndarray | None = None


def shard_arrays(shard, tumor_maps: bool = False) -> Shard:
    """The worker's whole shard (with its tumor maps when ``tumor_maps``)."""
    columns = {IMAGE: [], TARGET: [], WEIGHT: [], TUMOR_MAP: [], MAP_KNOWN: []}
    wanted = [IMAGE, TARGET, WEIGHT] + ([TUMOR_MAP, MAP_KNOWN] if tumor_maps else [])
    for batch in shard.iter_batches(batch_size=256, batch_format="numpy"):
        for name in wanted:
            columns[name].append(batch.get(name))

    def joined(name: str) -> np.ndarray | None:
        parts = columns[name]
        return None if not parts or any(part is None for part in parts) else np.concatenate(parts)

    if tumor_maps and joined(TUMOR_MAP) is None:
        raise ValueError("training with tumor maps needs the tumor_map column (preprocessed rows of cache format 2)")
    return Shard(joined(IMAGE), joined(TARGET), joined(WEIGHT), joined(TUMOR_MAP), joined(MAP_KNOWN))


def epoch_order(count: int, weights: np.ndarray | None, seed: int):
    """A tf.data source of image indices, drawn anew on each pass: a shuffle, or with draw weights ``count`` draws
    with replacement in proportion to them (``model.sources.balanced_weights``)."""
    if weights is None:
        return tf.data.Dataset.range(count).shuffle(count, seed=seed, reshuffle_each_iteration=True)
    weights = weights.astype(np.float64)  # summed in float64: numpy's choice wants probabilities summing to 1
    rng, probabilities = np.random.default_rng(seed), weights / weights.sum()

    def draws():
        yield from rng.choice(count, size=count, p=probabilities).tolist()

    return tf.data.Dataset.from_generator(draws, output_signature=tf.TensorSpec((), tf.int64))


def batch_seeds(seed: int, rank: int = 0):
    """A tf.data source of one augmentation seed per batch, drawn anew on each pass from the run's seed and the
    worker's rank: each batch's augmentation follows from its seed, whatever order the parallel map runs in."""
    rng = np.random.default_rng([seed, rank])

    def draws():
        while True:
            yield int(rng.integers(2**63 - 1))

    return tf.data.Dataset.from_generator(draws, output_signature=tf.TensorSpec((), tf.int64))


def training_feed(images: np.ndarray, targets: np.ndarray, config: dict, weights: np.ndarray | None = None,
                  rank: int = 0, tumor_maps: tuple[np.ndarray, np.ndarray] | None = None):
    """The worker's tf.data feed: an epoch's order (a shuffle, or a balanced draw when ``weights`` are given),
    batched, augmented in parallel (reproducibly: ``batch_seeds``), prefetched. With ``tumor_maps`` (the images'
    TUMOR_MAP and MAP_KNOWN), each map is moved as its image and its targets are ``(target masks, known maps)``:
    ``model.architecture.tumor_map_crossentropy``'s, at ``config["tumor_map_side"]`` cells a side.

    Ray has already split the data between workers, so TensorFlow's own auto-sharding is switched off.
    """
    columns = [tf.constant(images), tf.constant(targets.astype(np.float32))]
    if tumor_maps is not None:
        columns += [tf.constant(tumor_maps[0]), tf.constant(tumor_maps[1].astype(np.float32))]
    dataset = epoch_order(len(images), weights if config.get("balance_sources", True) else None, config["seed"])
    dataset = dataset.batch(config["worker_batch_size"]).map(
        lambda indices: tuple(tf.gather(column, indices) for column in columns))
    transforms = AugmentConfig(curve_probability=config.get("intensity_curves", 0.0),
                               spectrum_mix_probability=config.get("spectrum_mix", 0.0),
                               healthy_mirror_probability=config.get("healthy_mirror", 0.0))
    no_tumor = target_mask(NO_TUMOR)

    def transform(seed, pixels, batch_targets, *maps):
        if maps and transforms.healthy_mirror_probability > 0:
            pixels, mirrored_maps, batch_targets = healthy_mirror_batch(pixels, maps[0], batch_targets, no_tumor,
                                                                        int(seed), transforms)
            maps = (mirrored_maps,)
        augmented, moved = augment_batch(pixels, int(seed), transforms, *maps)
        return [augmented, batch_targets, moved] if maps else [augmented, batch_targets]

    def augment(batch, batch_seed):
        moving = batch[:3]  # the images, their targets, and their tumor maps where the batch has them
        moved = tf.numpy_function(transform, [batch_seed, *moving], [tf.uint8, tf.float32, tf.uint8][:len(moving)])
        for tensor, original in zip(moved, moving):
            tensor.set_shape(original.shape)
        return (*moved, *batch[3:])

    if config["augment"]:
        dataset = tf.data.Dataset.zip(dataset, batch_seeds(config["seed"], rank)).map(
            augment, num_parallel_calls=tf.data.AUTOTUNE)
    if tumor_maps is not None:
        dataset = dataset.map(lambda batch_images, batch_targets, maps, known: (
            batch_images, (batch_targets, known_map_targets(maps, known, config["tumor_map_side"]))))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def known_map_targets(maps: tf.Tensor, known: tf.Tensor, side: int) -> tf.Tensor:
    """``(batch, side, side, 2)``: the share of each cell the tumor covers (uint8 maps averaged over the cell), and
    whether the image's map is known."""
    shares = tf.image.resize(tf.cast(maps, tf.float32)[..., None] / 255.0, (side, side), method="area")
    return tf.concat([shares, tf.ones_like(shares) * tf.reshape(known, (-1, 1, 1, 1))], axis=-1)


def restore(model, eval_model, state: TrainingState, strategy, resume_from: str | None = None,
            network=None) -> tuple[TrainingState, list | None, list | None]:
    """Load the latest checkpoint this run reported (after a worker restart), else the earlier run's checkpoint at
    ``resume_from`` (a folder or URI), into ``model`` and its optimizer; return its state, best weights and weight
    average (None where it kept none).

    Every worker runs this, so the distributed ``model`` is loaded everywhere alike; the best weights and the
    average are read through the plain ``eval_model``."""
    checkpoint = ray.train.get_checkpoint() or (ray.train.Checkpoint(resume_from) if resume_from else None)
    if checkpoint is None:
        return state, None, None
    with checkpoint.as_directory() as directory:
        folder = pathlib.Path(directory)
        state = TrainingState(**json.loads((folder / STATE_FILE).read_text()))
        average = read_weights(eval_model, folder / AVERAGE_WEIGHTS)
        best = read_weights(eval_model, folder / BEST_WEIGHTS)
        (network or model).load_weights(str(folder / LATEST_WEIGHTS))  # a second output's layers start afresh
        restore_optimizer(model, folder / OPTIMIZER_STATE, strategy)
    model.optimizer.iterations.assign(state.optimizer_step)
    state.resumed_at.append(state.next_epoch)
    logger.info("resumed from checkpoint at epoch %d", state.next_epoch)
    return state, best, average


def read_weights(eval_model, path: pathlib.Path) -> list | None:
    if not path.exists():
        return None
    eval_model.load_weights(str(path))
    return eval_model.get_weights()


def restore_optimizer(model, path: pathlib.Path, strategy) -> None:
    """The optimizer's moments from a checkpoint that kept them (older checkpoints kept only the step count)."""
    if not path.exists():
        return
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
    with np.load(path) as saved:
        values = [saved[f"v{index}"] for index in range(len(saved.files))]
    variables = model.optimizer.variables()
    if [tuple(v.shape) for v in variables] != [value.shape for value in values]:
        logger.warning("the checkpoint's optimizer state does not fit this model; starting the moments afresh")
        return
    for variable, value in zip(variables, values):
        variable.assign(value)


def report_epoch(eval_model, best_weights: list, state: TrainingState, metrics: dict,
                 average_weights: list | None, optimizer_values: list) -> None:
    """Report metrics from every worker and a checkpoint from rank 0 (latest weights, best weights, the weight
    average, the optimizer's variables, state).

    The checkpoint is written from ``eval_model``, a plain copy already holding the latest weights: under
    ``MultiWorkerMirroredStrategy`` reading the distributed model's variables is a collective operation that every
    worker must join, so rank 0 must not read them alone.
    """
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        folder = pathlib.Path(directory)
        eval_model.save_weights(str(folder / LATEST_WEIGHTS))
        if average_weights is not None:
            eval_model.set_weights(average_weights)
            eval_model.save_weights(str(folder / AVERAGE_WEIGHTS))
        eval_model.set_weights(best_weights)
        eval_model.save_weights(str(folder / BEST_WEIGHTS))
        np.savez(folder / OPTIMIZER_STATE, **{f"v{index}": value for index, value in enumerate(optimizer_values)})
        (folder / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state)))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def validate(predictor, eval_model, weights: list, images: np.ndarray, targets: np.ndarray) -> dict:
    """Validation metrics of ``weights``, computed on the plain ``eval_model`` (left holding them)."""
    eval_model.set_weights(weights)
    probabilities = predictor(images)
    metrics = classification_metrics(probabilities, targets)
    return {"val_loss": masked_crossentropy_numpy(probabilities, targets), "val_accuracy": metrics["accuracy"],
            "val_macro_f1": metrics["macro_f1"],
            "val_tumor_sensitivity": metrics["tumor_vs_no_tumor"]["sensitivity"],
            "val_tumor_specificity": metrics["tumor_vs_no_tumor"]["specificity"]}


def update_state(state: TrainingState, epoch: int, metrics: dict, weights: list, best_weights: list | None) -> list:
    state.next_epoch = epoch + 1
    state.history.append(metrics)
    if metrics["val_loss"] < state.best_val_loss:
        state.best_val_loss, state.best_epoch, state.epochs_without_improvement = metrics["val_loss"], epoch, 0
        return weights
    state.epochs_without_improvement += 1
    return best_weights


def distribution_strategy(world_size: int) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy across workers; one worker trains under the default strategy, which skips the
    collective all-reduce of every gradient (probed on 960 images: 93-135 images/s under MWMS against 150 without;
    docs/benchmarks.md)."""
    return tf.distribute.MultiWorkerMirroredStrategy() if world_size > 1 else tf.distribute.get_strategy()


def train_loop_per_worker(config: dict) -> None:
    """The Ray Train worker: build (under MWMS when there are several workers), resume, then train, validate and
    checkpoint each epoch."""
    configure_tensorflow(max(1, int(config["cpus_per_worker"])), use_gpu=config["use_gpu"])
    architecture = ArchitectureConfig.from_dict(config["architecture"])
    rank = ray.train.get_context().get_world_rank()
    tf.keras.utils.set_random_seed(config["seed"] + rank)
    strategy = distribution_strategy(ray.train.get_context().get_world_size())
    with_maps = bool(config.get("tumor_map_weight"))
    with strategy.scope():
        if with_maps:
            model, network = build_tumor_map_trainer(architecture, config["image_size"])
        else:
            model = network = build_classifier(architecture, config["image_size"])
        compile_classifier(
            model, config["learning_rate"], config["steps_per_epoch"] * config["epochs"],
            int(config["steps_per_epoch"] * config["warmup_epochs"]), config["weight_decay"],
            config["label_smoothing"], config.get("tumor_map_weight", 0.0))
    parts = WeightParts(model, network)
    eval_model = build_classifier(architecture, config["image_size"])
    predictor = ProbabilityPredictor(eval_model)
    if config.get("initial_weights") is not None:  # a warm start; a checkpoint, restored next, takes precedence
        model.set_weights(parts.whole(config["initial_weights"]))
    state, best_weights, average = restore(model, eval_model, TrainingState(), strategy, config.get("resume_from"),
                                           network)
    averaging = weight_average(config, model, parts.whole(average) if average is not None else None, state)
    val = shard_arrays(ray.train.get_dataset_shard("val"))
    val_images, val_targets = val.images, val.targets
    train = shard_arrays(ray.train.get_dataset_shard("train"), tumor_maps=with_maps)
    if with_maps:
        config = {**config, "tumor_map_side": int(model.outputs[-1].shape[1])}
    feed = training_feed(train.images, train.targets, config, train.weights, rank,
                         (train.tumor_maps, train.maps_known) if with_maps else None)
    for epoch in range(state.next_epoch, config["epochs"]):
        fit_started = time.perf_counter()
        fit = model.fit(feed, epochs=1, verbose=0, callbacks=[averaging] if averaging else [])
        fit_seconds = time.perf_counter() - fit_started
        weights = parts.network(model.get_weights())  # every worker reads: a collective under MWMS
        # what validation judges and checkpoints keep
        kept = parts.network(averaging.averaged_weights()) if averaging else weights
        metrics = {"epoch": epoch, "train_loss": float(fit.history["loss"][-1]),
                   **({"train_tumor_map_loss": float(fit.history[f"{TUMOR_MAP_OUTPUT}_loss"][-1])}
                      if with_maps else {}),
                   "fit_seconds": round(fit_seconds, 2),
                   "train_images_per_second": round(config["rows_per_worker"] * config["num_workers"] / fit_seconds, 1),
                   **validate(predictor, eval_model, kept, val_images, val_targets)}
        if averaging:  # the same epoch without the average, for the record: what averaging adds
            raw = validate(predictor, eval_model, weights, val_images, val_targets)
            metrics.update({f"raw_{name}": value for name, value in raw.items()})
            state.average_steps = averaging.steps
        state.optimizer_step = int(model.optimizer.iterations.numpy())
        optimizer_values = [variable.numpy() for variable in model.optimizer.variables()]
        best_weights = update_state(state, epoch, metrics, kept, best_weights)
        eval_model.set_weights(weights)  # the checkpoint's latest weights are the trained ones, not the average
        report_epoch(eval_model, best_weights, state, metrics, kept if averaging else None, optimizer_values)
        if state.epochs_without_improvement >= config["patience"]:
            break


class WeightParts:
    """Where a network's weights lie among its trainer's: the same list for a plain network; for a trainer with a
    second output (``build_tumor_map_trainer``), the network's are picked out by variable, in the network's
    ``get_weights`` order, and put back beside the second output's."""

    def __init__(self, trainer, network):
        place = {id(variable): index for index, variable in enumerate(trainer.weights)}
        self.trainer = trainer
        self.positions = None if trainer is network else [place[id(variable)] for variable in network.weights]

    def network(self, weights: list) -> list:
        return weights if self.positions is None else [weights[index] for index in self.positions]

    def whole(self, network_weights: list) -> list:
        if self.positions is None:
            return network_weights
        weights = self.trainer.get_weights()
        for index, value in zip(self.positions, network_weights):
            weights[index] = value
        return weights


def weight_average(config: dict, model, restored: list | None, state: TrainingState):
    """The run's weight average (``model.averaging``), continued from a checkpoint's; None when switched off."""
    if not config.get("ema_decay"):
        return None
    start = restored if restored is not None else model.get_weights()
    return WeightAverage(config["ema_decay"]).start(start, state.average_steps if restored is not None else 0)


TUMOR_MAP_COLUMNS = (TUMOR_MAP, MAP_KNOWN)


def without_columns(dataset: ray.data.Dataset, columns: tuple[str, ...]) -> ray.data.Dataset:
    """The dataset without those of ``columns`` it has (the tumor maps, where training does not read them),
    materialized here: the workers hold every CPU while they train, so no projection could run after they start.
    ``pipeline.retrain``'s splits leave no such column, so this copies only a caller's own dataset."""
    present = [name for name in columns if name in dataset.columns()]
    return dataset.drop_columns(present).materialize() if present else dataset


def build_trainer(train_dataset: ray.data.Dataset, val_dataset: ray.data.Dataset,
                  architecture: ArchitectureConfig, image_size: int, config: TrainConfig,
                  initial_weights: list | None = None) -> TensorflowTrainer:
    worker_batch_size = max(1, config.batch_size // config.num_workers)
    rows_per_worker = train_dataset.count() // config.num_workers
    loop_config = {**dataclasses.asdict(config), "architecture": architecture.to_dict(), "image_size": image_size,
                   "worker_batch_size": worker_batch_size, "rows_per_worker": rows_per_worker,
                   "steps_per_epoch": max(1, -(-rows_per_worker // worker_batch_size)),
                   "initial_weights": initial_weights}
    resources = {"CPU": config.cpus_per_worker}
    return TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                               resources_per_worker=resources),
        datasets={"train": without_columns(train_dataset, () if config.tumor_map_weight else TUMOR_MAP_COLUMNS)
                  .randomize_block_order(), "val": without_columns(val_dataset, TUMOR_MAP_COLUMNS)},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        run_config=ray.train.RunConfig(
            name=config.run_name, storage_path=config.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )


def train_classifier(train_dataset: ray.data.Dataset, val_dataset: ray.data.Dataset,
                     architecture: ArchitectureConfig, image_size: int, config: TrainConfig,
                     initial_weights: list | None = None) -> tuple[pathlib.Path, dict]:
    """Train (from ``initial_weights``, a network's ``get_weights()``, when given); return a local folder with the
    best weights (``best.weights.h5``) and the final training state."""
    result = build_trainer(train_dataset, val_dataset, architecture, image_size, config, initial_weights).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training reported no checkpoint: {result.error}")
    local = pathlib.Path(tempfile.mkdtemp(prefix="mri-train-"))
    with result.checkpoint.as_directory() as directory:
        for name in (BEST_WEIGHTS, LATEST_WEIGHTS, STATE_FILE):
            (local / name).write_bytes((pathlib.Path(directory) / name).read_bytes())
    state = json.loads((local / STATE_FILE).read_text())
    logger.info("training stopped after epoch %d; best epoch %d, val loss %.4f; resumed from checkpoints at "
                "epochs %s", state["next_epoch"] - 1, state["best_epoch"], state["best_val_loss"],
                state["resumed_at"])
    return local, state
