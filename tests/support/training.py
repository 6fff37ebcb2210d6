"""A small real retraining configuration (the committed labelled samples, 96 px) shared by the training, training-
fault and cross-validation tests: one Ray Train worker holding both CPUs, as the job's defaults have it, or two
workers of half a CPU each where a test is about data-parallel training itself. Each Ray Train start costs minutes
on a small CPU, most of it fixed (worker start, tracing, export), so the tests share runs where they can."""

from __future__ import annotations

import pathlib

from model.config import ArchitectureConfig, RetrainConfig, TrainConfig
from model.preprocessing import PreprocessConfig
from tests.conftest import SAMPLES

SIZE = 96
ARCHITECTURE = ArchitectureConfig(head="bilstm")  # the head with the most to go wrong


def worker_resources(workers: int) -> dict:
    """1: one worker with both CPUs (the job's default); 2: two workers under MultiWorkerMirroredStrategy, half a CPU
    each, the other CPU left to Ray Data. ``TrainConfig``'s fields."""
    return {"num_workers": workers, "cpus_per_worker": 2.0 if workers == 1 else 0.5}


def small_retraining(output: pathlib.Path, epochs: int, version: str, workers: int = 1) -> RetrainConfig:
    """``workers``: as ``worker_resources`` has them."""
    training = TrainConfig(epochs=epochs, batch_size=16, learning_rate=3e-3, augment=False,
                           **worker_resources(workers), storage_path=str(output / "ray"), patience=10)
    return RetrainConfig(data=str(SAMPLES / "labelled"), output=str(output / "registry"), validation_fraction=0.25,
                         min_macro_f1=0.0, architecture=ARCHITECTURE, preprocessing=PreprocessConfig(image_size=SIZE),
                         training=training, version=version)
