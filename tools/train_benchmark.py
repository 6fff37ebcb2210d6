"""Training speed on this machine: a plain single-process ``fit`` against a 1-worker Ray Train run, side by side.

    python -m tools.train_benchmark --source ../shared/datasets/brain-tumor-mri/Training --images 960 --epochs 4

Both train the same classifier (``model.architecture``, the default head) on the same preprocessed images through
the same tf.data feed (``model.train.training_feed``, augmentation on), with the same TensorFlow threads. The plain
fit reports images/s per epoch. The Ray Train run reports each epoch's ``fit`` time from inside the worker, and its
whole epoch (validation and checkpoint included) as the difference between an ``--epochs`` run and a 1-epoch run,
which cancels the start-up. Medians of the epochs after the first (which traces the graph). Results go to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import numpy as np
import ray

from infra.ray_runtime import configure_logging, ensure_ray
from model.architecture import build_classifier, compile_classifier
from model.config import ArchitectureConfig, TrainConfig
from model.data import IMAGE, TARGET
from model.decode import decode_file
from model.labels import CLASS_NAMES, target_mask
from model.predict import configure_tensorflow
from model.preprocessing import PreprocessConfig, preprocess_image
from model.train import build_trainer, training_feed


def load_images(source: pathlib.Path, count: int, config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    per_class = max(1, count // len(CLASS_NAMES))
    files = [(path, name) for name in CLASS_NAMES for path in sorted((source / name).glob("*.jpg"))[:per_class]]
    images = np.stack([preprocess_image(decode_file(path.read_bytes(), str(path)).frames[0], config)
                       for path, _ in files])
    return images, np.stack([target_mask(name) for _, name in files])


def plain_fit_rates(images: np.ndarray, targets: np.ndarray, epochs: int, image_size: int) -> list[float]:
    """Images/s of each epoch of a single-process ``fit`` with the Ray Train worker's feed and threads."""
    train = TrainConfig()
    configure_tensorflow(int(train.cpus_per_worker))
    model = compile_classifier(build_classifier(ArchitectureConfig(), image_size), train.learning_rate,
                               epochs * len(images) // train.batch_size, 0, train.weight_decay, train.label_smoothing)
    feed = training_feed(images, targets, {"seed": 0, "worker_batch_size": train.batch_size, "augment": True})
    rates = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.fit(feed, epochs=1, verbose=0)
        rates.append(len(images) / (time.perf_counter() - started))
    return rates


def ray_train_run(images: np.ndarray, targets: np.ndarray, epochs: int, image_size: int,
                  storage: str) -> tuple[float, list[float]]:
    """(wall seconds of the whole run, images/s of each epoch's ``fit`` as the worker measured it)."""
    rows = [{IMAGE: image, TARGET: target} for image, target in zip(images, targets)]
    train = ray.data.from_items(rows).materialize()
    validation = ray.data.from_items(rows[: len(rows) // 5]).materialize()
    config = TrainConfig(epochs=epochs, patience=epochs + 1, storage_path=storage)
    started = time.perf_counter()
    result = build_trainer(train, validation, ArchitectureConfig(), image_size, config).fit()
    seconds = time.perf_counter() - started
    return seconds, [row["train_images_per_second"] for row in result.metrics_dataframe.to_dict("records")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=pathlib.Path,
                        default=pathlib.Path("../shared/datasets/brain-tumor-mri/Training"))
    parser.add_argument("--images", type=int, default=960, help="training images (equal per class)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each measured run")
    parser.add_argument("--storage", default="/tmp/mri-train-benchmark", help="Ray Train checkpoint folder")
    args = parser.parse_args()
    configure_logging()
    preprocessing = PreprocessConfig()
    images, targets = load_images(args.source, args.images, preprocessing)
    ensure_ray()
    one_epoch, _ = ray_train_run(images, targets, 1, preprocessing.image_size, args.storage)
    many_epochs, fit_rates = ray_train_run(images, targets, args.epochs, preprocessing.image_size, args.storage)
    plain = plain_fit_rates(images, targets, args.epochs, preprocessing.image_size)
    epoch_seconds = (many_epochs - one_epoch) / (args.epochs - 1)
    plain_rate = statistics.median(plain[1:])
    result = {
        "images": len(images), "epochs": args.epochs,
        "plain_fit_images_per_second": round(plain_rate, 1),
        "ray_train_fit_images_per_second": round(statistics.median(fit_rates[1:]), 1),
        "ray_train_whole_epoch_images_per_second": round(len(images) / epoch_seconds, 1),
        "ray_train_start_up_seconds": round(one_epoch - epoch_seconds, 1),
    }
    result["fit_ratio_to_plain"] = round(result["ray_train_fit_images_per_second"] / plain_rate, 2)
    result["whole_epoch_ratio_to_plain"] = round(result["ray_train_whole_epoch_images_per_second"] / plain_rate, 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
