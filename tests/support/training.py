"""A small real retraining configuration (the committed labelled samples, 96 px, 2 workers) shared by the training
and training-fault tests."""

from __future__ import annotations

import pathlib

from model.config import ArchitectureConfig, RetrainConfig, TrainConfig
from model.preprocessing import PreprocessConfig
from tests.conftest import SAMPLES

SIZE = 96
ARCHITECTURE = ArchitectureConfig(head="bilstm")  # the head with the most to go wrong


def small_retraining(output: pathlib.Path, epochs: int, version: str) -> RetrainConfig:
    training = TrainConfig(epochs=epochs, batch_size=16, learning_rate=3e-3, augment=False, num_workers=2,
                           cpus_per_worker=0.5, storage_path=str(output / "ray"), patience=10)
    return RetrainConfig(data=str(SAMPLES / "labelled"), output=str(output / "registry"), validation_fraction=0.25,
                         min_macro_f1=0.0, architecture=ARCHITECTURE, preprocessing=PreprocessConfig(image_size=SIZE),
                         training=training, version=version)
