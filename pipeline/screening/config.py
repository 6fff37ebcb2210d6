"""The options of one screening run, and what they settle before any work: the pseudonym key and how
source paths are stored."""

from __future__ import annotations

import dataclasses
import re


from infra import storage
from model import registry
from model.decode import DecodeLimits
from pipeline.sources.listing import local_path
from pipeline.sources.paths import PathPseudonymizer
from pipeline.pseudonym import PseudonymKeyError, load_key
from model.backends import BACKENDS



@dataclasses.dataclass(frozen=True)
class ScreenConfig:
    """Options of one screening run; the defaults suit a laptop or a small CPU cluster."""

    inputs: tuple[str, ...]
    output: str
    manifests: tuple[str, ...] = ()
    model: str = registry.DEFAULT_MODEL
    threshold: float | None = None  # None: the model's own operating point
    run_date: str | None = None
    pseudonym_key_file: str | None = None
    create_pseudonym_key: bool = False
    decode_batch_size: int = 64
    decode_cpus: float = 1.0
    inference_batch_size: int = 256
    inference_actors: int | None = None
    inference_cpus: float = 1.0
    use_gpu: bool | None = None
    limits: DecodeLimits = DecodeLimits()
    allow_empty: bool = False
    backend: str = "auto"  # "tensorflow", "onnx", "onnx-int8", or "auto" (``inference_backend``)
    full: bool = False  # rescore every listed file, not only new and changed ones
    rescore_on_model_change: bool = False  # also rescore unchanged files scored by another model
    selection_rules: str | None = None  # which DICOM objects are brain MRI: None, the bundled rules; "all", every one
    mirror_average: bool = False  # average each image's probabilities with its left-right mirror's
    pseudonymize_paths: bool = False  # store source_uri with its folder names pseudonymised (pipeline.sources.paths)

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be a probability between 0 and 1, got {self.threshold}")
        if self.backend not in ("auto", *BACKENDS):
            raise ValueError(f"backend must be auto, {' or '.join(BACKENDS)}, got {self.backend!r}")
        if self.run_date is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", self.run_date):
            raise ValueError(f"run_date must be written YYYY-MM-DD, got {self.run_date!r}")


def resolve_key(config: ScreenConfig, may_hold_dicom: bool) -> bytes | None:
    key = load_key(config.pseudonym_key_file, config.create_pseudonym_key)
    if key is None and (may_hold_dicom or config.pseudonymize_paths):
        needs = "the input holds DICOM files" if may_hold_dicom else "--pseudonymize-paths needs it"
        raise PseudonymKeyError(
            f"{needs} but no pseudonym key was given: set PSEUDONYM_KEY, or pass "
            f"--pseudonym-key-file (with --create-pseudonym-key to generate one)")
    return key


def path_pseudonymizer(config: ScreenConfig, key: bytes | None) -> PathPseudonymizer | None:
    """The run's ``PathPseudonymizer`` (its input folders kept as they are), or None when paths are stored as
    they are."""
    if not config.pseudonymize_paths:
        return None
    roots = [location.rstrip("/") if storage.is_s3(location) else local_path(location) for location in config.inputs]
    return PathPseudonymizer(key, roots)
