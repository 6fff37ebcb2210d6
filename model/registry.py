"""Model directories and the model registry: the only code that knows how a model is laid out on storage.

A model directory holds ``weights.h5`` (Keras weights only: nothing is unpickled on load) and ``model.json`` (its
version, label map, architecture and preprocessing parameters, the weights' sha256 and its validation metrics).
A registry is a folder of model directories plus ``registry.json`` naming the promoted (``current``) version and
the history of promotion decisions. Loading verifies the sha256, and that the weights are an HDF5 file, before
Keras touches them (``model.predict.load_classifier`` does the loading). Nothing here imports TensorFlow: the
screening driver and the jobs' ``--help`` read models without it.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import pathlib
import tempfile

from infra import storage
from model.config import ArchitectureConfig
from model.labels import CLASS_NAMES
from model.preprocessing import PreprocessConfig

WEIGHTS_FILE = "weights.h5"
METADATA_FILE = "model.json"
ONNX_FILE = "model.onnx"  # the same network exported for ONNX Runtime (CPU inference), beside the weights
ONNX_INT8_FILE = "model.int8.onnx"  # that export quantized to int8 (tools.quantize_onnx), where the model ships one
ONNX_EXPORTS = {"onnx": ONNX_FILE, "onnx_int8": ONNX_INT8_FILE}  # model.json key -> default file name
REGISTRY_FILE = "registry.json"
HEATMAP_LOCALISATION = "heatmap_localisation"  # model.json key: where its heat maps point (tools.heatmap_study)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
DEFAULT_MODEL = str(pathlib.Path(__file__).resolve().parents[1] / "models")


class ModelError(RuntimeError):
    """A model that is missing, corrupt or does not match its metadata."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a loaded model directory says about itself."""

    uri: str
    version: str
    weights_sha256: str
    architecture: ArchitectureConfig
    preprocessing: PreprocessConfig
    class_names: tuple[str, ...]
    metadata: dict

    @property
    def weights_uri(self) -> str:
        return storage.join(self.uri, WEIGHTS_FILE)

    @property
    def onnx_sha256(self) -> str | None:
        """sha256 of the model's ONNX export, None for a model without one."""
        return self.export_sha256("onnx")

    @property
    def onnx_uri(self) -> str:
        return self.export_uri("onnx")

    def export_sha256(self, key: str) -> str | None:
        """sha256 of the ONNX export recorded under ``key`` ("onnx", "onnx_int8"), None when the model has none."""
        return self.metadata.get(key, {}).get("sha256")

    def export_uri(self, key: str) -> str:
        return storage.join(self.uri, self.metadata.get(key, {}).get("file", ONNX_EXPORTS[key]))

    @property
    def temperature(self) -> float:
        """The fitted calibration temperature (1.0 for a model calibrated before there was one)."""
        return float(self.metadata.get("calibration", {}).get("temperature", 1.0))

    @property
    def threshold(self) -> float:
        """The flag threshold chosen on validation (0.5 for a model without an operating point)."""
        return float(self.metadata.get("operating_point", {}).get("threshold", 0.5))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_version(prefix: str = "mri") -> str:
    return f"{prefix}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}"


def save_model(model, directory: str, version: str, architecture: ArchitectureConfig,
               preprocessing: PreprocessConfig, metadata: dict | None = None) -> ModelInfo:
    """Write weights and metadata of a Keras classifier to a model directory (local or S3)."""
    with tempfile.TemporaryDirectory() as scratch:
        local_weights = pathlib.Path(scratch) / WEIGHTS_FILE
        model.save_weights(str(local_weights))
        weights = local_weights.read_bytes()
    record = {"version": version, "class_names": list(CLASS_NAMES), "weights_file": WEIGHTS_FILE,
              "weights_sha256": sha256_hex(weights), "architecture": architecture.to_dict(),
              "preprocessing": preprocessing.to_dict(), **(metadata or {})}
    storage.write_bytes(storage.join(directory, WEIGHTS_FILE), weights)
    storage.write_text(storage.join(directory, METADATA_FILE), json.dumps(record, indent=2, sort_keys=True))
    return info_from_record(directory, record)


def info_from_record(directory: str, record: dict) -> ModelInfo:
    if tuple(record.get("class_names", ())) != CLASS_NAMES:
        raise ModelError(f"model at {directory} predicts {record.get('class_names')}, expected {list(CLASS_NAMES)}")
    return ModelInfo(uri=directory, version=record["version"], weights_sha256=record["weights_sha256"],
                     architecture=ArchitectureConfig.from_dict(record["architecture"]),
                     preprocessing=PreprocessConfig.from_dict(record["preprocessing"]),
                     class_names=CLASS_NAMES, metadata=record)


def resolve_model_dir(uri: str) -> str:
    """A model directory itself, or the current model of a registry."""
    if storage.exists(storage.join(uri, METADATA_FILE)):
        return uri
    if storage.exists(storage.join(uri, REGISTRY_FILE)):
        current = read_registry(uri).get("current")
        if not current:
            raise ModelError(f"registry {uri} has no promoted model yet")
        return storage.join(uri, current)
    raise ModelError(f"no model at {uri}: expected {METADATA_FILE} (a model) or {REGISTRY_FILE} (a registry)")


def load_model_info(uri: str = DEFAULT_MODEL) -> ModelInfo:
    """Metadata of the model at ``uri`` after checking that its weights match the recorded sha256."""
    directory = resolve_model_dir(uri)
    try:
        record = json.loads(storage.read_text(storage.join(directory, METADATA_FILE)))
        info = info_from_record(directory, record)
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise ModelError(f"model metadata at {directory} is unreadable: {error}") from error
    verify_weights(info, storage.read_bytes(info.weights_uri))
    return info


def verify_weights(info: ModelInfo, weights: bytes) -> None:
    """Refuse weights whose sha256 differs from the recorded one, or that are not an HDF5 file."""
    actual = sha256_hex(weights)
    if actual != info.weights_sha256:
        raise ModelError(f"model weights at {info.weights_uri} are corrupt or replaced: sha256 {actual} "
                         f"does not match the recorded {info.weights_sha256}")
    if not weights.startswith(HDF5_SIGNATURE):
        raise ModelError(f"model weights at {info.weights_uri} are not an HDF5 file (they start with "
                         f"{weights[:8]!r}); refusing to load them")


def verify_onnx(info: ModelInfo, data: bytes, key: str = "onnx") -> None:
    """Refuse an ONNX export (``key``: "onnx", or "onnx_int8" for its int8 quantization) whose sha256 differs from
    the one recorded in model.json."""
    expected = info.export_sha256(key)
    if expected is None:
        how = (f"quantize one with `python -m tools.quantize_onnx --model {info.uri} --write`" if key == "onnx_int8"
               else f"export one with `python -m tools.export_onnx {info.uri}`")
        raise ModelError(f"model {info.version} at {info.uri} has no {ONNX_EXPORTS[key]}: {how}, or score with "
                         f"another --backend")
    actual = sha256_hex(data)
    if actual != expected:
        raise ModelError(f"ONNX export at {info.export_uri(key)} is corrupt or replaced: sha256 {actual} does not "
                         f"match the recorded {expected}")


def attach_file(info: ModelInfo, key: str, name: str, data: bytes, details: dict) -> ModelInfo:
    """Write ``data`` as ``name`` beside the weights and record it (file, sha256, ``details``) under ``key`` in
    model.json."""
    record = {**info.metadata, key: {"file": name, "sha256": sha256_hex(data), **details}}
    storage.write_bytes(storage.join(info.uri, name), data)
    storage.write_text(storage.join(info.uri, METADATA_FILE), json.dumps(record, indent=2, sort_keys=True))
    return info_from_record(info.uri, record)


def update_metadata(info: ModelInfo, **fields) -> ModelInfo:
    """Record ``fields`` in model.json beside what it holds (figures measured after the model was saved)."""
    record = {**info.metadata, **fields}
    storage.write_text(storage.join(info.uri, METADATA_FILE), json.dumps(record, indent=2, sort_keys=True))
    return info_from_record(info.uri, record)


def attach_onnx(info: ModelInfo, data: bytes, details: dict) -> ModelInfo:
    """Write the ONNX export beside the weights and record its sha256 (and ``details``) in model.json."""
    return attach_file(info, "onnx", ONNX_FILE, data, details)


def read_registry(registry: str) -> dict:
    uri = storage.join(registry, REGISTRY_FILE)
    if not storage.exists(uri):
        return {"current": None, "history": []}
    return json.loads(storage.read_text(uri))


def record_decision(registry: str, version: str, promoted: bool, reason: str) -> dict:
    """Append a promotion decision to the registry and, when promoted, make ``version`` current."""
    state = read_registry(registry)
    state["history"].append({"version": version, "promoted": promoted, "reason": reason,
                             "decided_at": datetime.datetime.now(datetime.timezone.utc).isoformat()})
    if promoted:
        state["current"] = version
    storage.write_text(storage.join(registry, REGISTRY_FILE), json.dumps(state, indent=2))
    return state
