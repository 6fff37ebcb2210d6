"""Inference with ONNX Runtime: the CPU backend of the scoring pipeline's inference actors.

The model's ONNX export (``model.onnx``, written at training time by ``model.onnx_export``) is verified against the
sha256 in its model.json before ONNX Runtime reads it, like the Keras weights. It takes the same uint8 images and
returns the same softmax probabilities (parity with TensorFlow is tested to 1e-4 on the sample archive); the
model's calibration temperature is applied after, as for TensorFlow. This module never imports TensorFlow, so an
actor on this backend starts without it.
"""

from __future__ import annotations

import numpy as np

from infra import storage
from model.calibration import apply_temperature
from model.registry import ModelError, ModelInfo, verify_onnx


class OnnxPredictor:
    """``(n, S, S)`` uint8 -> ``(n, classes)`` float32 probabilities (calibrated by ``temperature``) from an ONNX
    graph, on ``cpu_threads`` threads. ``for_model`` is the verified way in."""

    def __init__(self, data: bytes, classes: int, temperature: float = 1.0, cpu_threads: int | None = None,
                 batch_size: int = 64):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if cpu_threads:
            options.intra_op_num_threads = cpu_threads
            options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.classes, self.temperature, self.batch_size = classes, temperature, batch_size

    @classmethod
    def for_model(cls, info: ModelInfo, expected_sha256: str | None = None, cpu_threads: int | None = None,
                  batch_size: int = 64, export: str = "onnx") -> "OnnxPredictor":
        """The model's export (``export``: "onnx", or "onnx_int8" for its int8 quantization), after checking the
        weights are the ones the run resolved (``expected_sha256``) and the export's bytes match the sha256
        recorded beside them."""
        if expected_sha256 is not None and info.weights_sha256 != expected_sha256:
            raise ModelError(f"model at {info.uri} has weights sha256 {info.weights_sha256}, but this run resolved "
                             f"{expected_sha256}: the model changed after the run started; refusing to score with it")
        data = storage.read_bytes(info.export_uri(export))
        verify_onnx(info, data, export)
        return cls(data, len(info.class_names), info.temperature, cpu_threads, batch_size)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.with_features(images)[0]

    def with_features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(n, S, S)`` uint8 -> (probabilities, features); features are None for an export without them."""
        outputs = self.session.get_outputs()
        if len(images) == 0:
            return np.zeros((0, self.classes), np.float32), (
                np.zeros((0, outputs[1].shape[-1]), np.float32) if len(outputs) > 1 else None)
        chunks = [self.session.run(None, {self.input_name: images[start:start + self.batch_size]})
                  for start in range(0, len(images), self.batch_size)]
        probabilities = apply_temperature(np.concatenate([c[0] for c in chunks]).astype(np.float32), self.temperature)
        features = np.concatenate([c[1] for c in chunks]).astype(np.float32) if len(outputs) > 1 else None
        return probabilities, features
