"""The options of one screening run, and what they settle before any work: the pseudonym key, how source paths are
stored, and how a PACS input is searched and read."""

from __future__ import annotations

import dataclasses
import re


from infra import storage
from model import registry
from model.decode import DecodeLimits
from pipeline.dicomweb.client import load_credentials
from pipeline.sources.listing import local_path
from pipeline.sources.pacs import MAX_CONNECTIONS, PacsOptions, is_dicomweb
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
    # a PACS input (dicomweb+https://...): where its credentials are (else DICOMWEB_* variables), the CA that signs
    # its TLS certificate (else the system's), requests at once and a second a process, and what it is searched for
    dicomweb_credentials_file: str | None = None
    dicomweb_ca_bundle: str | None = None
    dicomweb_max_connections: int = MAX_CONNECTIONS
    dicomweb_requests_per_second: float | None = None  # None: no limit but the connections'
    study_date_from: str | None = None  # YYYY-MM-DD; None: the run date
    study_date_to: str | None = None  # YYYY-MM-DD; None: the run date
    study_modalities: tuple[str, ...] = ("MR",)

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be a probability between 0 and 1, got {self.threshold}")
        if self.backend not in ("auto", *BACKENDS):
            raise ValueError(f"backend must be auto, {' or '.join(BACKENDS)}, got {self.backend!r}")
        for name in ("run_date", "study_date_from", "study_date_to"):
            value = getattr(self, name)
            if value is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                raise ValueError(f"{name} must be written YYYY-MM-DD, got {value!r}")
        if self.study_date_from and self.study_date_to and self.study_date_from > self.study_date_to:
            raise ValueError(f"study_date_from {self.study_date_from} is after study_date_to {self.study_date_to}")
        if not all(re.fullmatch(r"[A-Z0-9_ ]{1,16}", modality) for modality in self.study_modalities):
            raise ValueError(f"study_modalities are DICOM modality codes such as MR, got {self.study_modalities}")


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
    roots = [location.rstrip("/") if storage.is_s3(location) or is_dicomweb(location) else local_path(location)
             for location in config.inputs]
    return PathPseudonymizer(key, roots)


def study_dates(config: ScreenConfig, run_date: str) -> tuple[str, str]:
    """The first and last study date a PACS is searched for, YYYYMMDD: the run date unless the options say
    otherwise; one end given alone, beyond the run date, is both."""
    first, last = config.study_date_from or run_date, config.study_date_to or run_date
    if config.study_date_from is None:
        first = min(first, last)
    if config.study_date_to is None:
        last = max(first, last)
    return first.replace("-", ""), last.replace("-", "")


def pacs_options(config: ScreenConfig, run_date: str) -> PacsOptions | None:
    """How the run's PACS inputs are searched and read, their credentials loaded (from the file, else the
    environment; ``DicomwebConfigError`` when they cannot work); None when no input is a PACS."""
    if not any(is_dicomweb(location) for location in config.inputs):
        return None
    return PacsOptions(load_credentials(config.dicomweb_credentials_file), config.dicomweb_max_connections,
                       config.dicomweb_requests_per_second, config.dicomweb_ca_bundle, study_dates(config, run_date),
                       config.study_modalities)
