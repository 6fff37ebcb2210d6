"""The configurations of the model's life, without TensorFlow: the network's shape, training, retraining.

Read by the registry, the card and the jobs (whose ``--help`` shows these defaults without loading TensorFlow).
The input side is ``model.preprocessing.PreprocessConfig.image_size`` (its one home); the network is built from
both by ``model.architecture.build_classifier``.
"""

from __future__ import annotations

import dataclasses

from model.dedup import DEFAULT_SIMILARITY
from model.preprocessing import PreprocessConfig

HEADS = ("bilstm", "pooling", "lstm")


@dataclasses.dataclass(frozen=True)
class ArchitectureConfig:
    """Everything that decides the shape of the network; saved with every model."""

    head: str = "bilstm"
    lstm_units: int = 128
    row_channels: int = 128
    column_channels: int = 32
    dropout: float = 0.3
    batchnorm_momentum: float = 0.9
    members: int = 1  # networks trained apart (seeds) whose probabilities the model averages
    mirror_views: bool = False  # each member also reads the left-right mirror of the slice, averaged in

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}: expected one of {', '.join(HEADS)}")
        if self.members < 1:
            raise ValueError(f"an ensemble needs at least one member, not {self.members}")

    @property
    def is_ensemble(self) -> bool:
        """More than one network, or one that also reads the mirror: an averaging graph over single networks."""
        return self.members > 1 or self.mirror_views

    def member(self) -> "ArchitectureConfig":
        """The architecture of one member: the single network that training makes."""
        return dataclasses.replace(self, members=1, mirror_views=False)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ArchitectureConfig":
        values = dict(values)
        if "head" not in values and "use_lstm" in values:  # model.json written before heads had names
            values["head"] = "lstm" if values["use_lstm"] else "pooling"
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train: schedule, early stopping and the scale of the Ray Train run."""

    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3  # the peak, reached after the warm-up
    warmup_epochs: float = 2.0
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    ema_decay: float = 0.999  # exponential moving average of the weights (model.averaging); 0 switches it off
    patience: int = 10
    augment: bool = True
    intensity_curves: float = 0.0  # share of slices given a random intensity curve (model.augment.random_curve)
    spectrum_mix: float = 0.0  # share of slices given another slice's coarse look (model.augment.mix_spectrum)
    healthy_mirror: float = 0.0  # share of one-sided tumors' slices made tumor-free (model.augment.healthy_mirror)
    balance_sources: bool = True  # each epoch draws a class's images evenly from the sources that have it
    class_balance: bool = False  # ... and each class at the folder-per-class data's share, not the pooled one
    tumor_map_weight: float = 0.0  # > 0: also learn where tumors are, from masks (build_tumor_map_trainer)
    level_balance: bool = False  # ... and a site's class evenly from the thirds of the head (model.sources.head_levels)
    seed: int = 0
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 2.0
    max_failures: int = 2
    storage_path: str | None = None
    run_name: str | None = None
    resume_from: str | None = None  # a checkpoint folder (local or s3://) of an earlier run to continue from


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """One retraining run: where the labelled data is, the registry it writes to, and how to split and train."""

    data: str
    output: str
    tumor_data: tuple[str, ...] = ()
    validation_fraction: float = 0.15
    duplicate_similarity: float = DEFAULT_SIMILARITY
    split_seed: int = 0
    min_macro_f1: float = 0.8  # a first model (empty registry) below this validation macro-F1 stays a candidate
    architecture: ArchitectureConfig = ArchitectureConfig()
    preprocessing: PreprocessConfig = PreprocessConfig()
    training: TrainConfig = TrainConfig()
    version: str | None = None
    cache: str | None = None  # folder (local or S3) keeping preprocessed training images between runs
    member_models: tuple[str, ...] = ()  # single-network model folders trained on this split, reused as members
    held_out: tuple[str, ...] = ()  # local folders of MRI kept out of training, to judge the int8 graph on
    site_data: tuple[str, ...] = ()  # other hospitals' labelled slices (model.data.list_site_images)
    reviews: tuple[str, ...] = ()  # results folders whose radiologists' verdicts label slices (training only)
    leave_out_site: str | None = None  # a site of the site data kept out of training and judged on (a study)
    init_from: str | None = None  # a model trained on this run's base split whose weights training starts from
    source_margin: float = 0.02  # no source's validation sensitivity or specificity may fall more below current's
    class_margin: float = 0.03  # ... nor a source's class recall (the share of a class typed as that class)
