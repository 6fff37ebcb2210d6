"""Exporting a trained classifier to ONNX (``tf2onnx``, opset 17), checked against TensorFlow before it is kept.

The export is the whole inference graph of the Keras model: uint8 images in, softmax probabilities out, and as a
second output the head's features that the out-of-distribution score reads (``model.architecture.with_features``;
the augmentation layers are training-only and not part of it). It is refused when ONNX Runtime's probabilities differ
from TensorFlow's by more than ``PARITY_TOLERANCE`` on the check images.
"""

from __future__ import annotations

import logging

import numpy as np

from infra.logs import logger_at
from model.onnx_runtime import OnnxPredictor
from model.predict import ProbabilityPredictor
from model.registry import ModelError, ModelInfo, attach_onnx
from model.tensorflow_runtime import tf
from model.architecture import with_features

OPSET = 17
PARITY_TOLERANCE = 1e-4


def export_onnx(model) -> bytes:
    """The serialized ONNX graph of a tf_keras classifier."""
    import tf2onnx

    spec = [tf.TensorSpec((None, *model.inputs[0].shape[1:]), model.inputs[0].dtype, name="images")]
    with logger_at(logging.WARNING, "tf2onnx"):  # the converter logs a line per node it folds
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    return proto.SerializeToString()


def export_and_attach(model, info: ModelInfo, check_images: np.ndarray) -> ModelInfo:
    """Export ``model`` (the network of ``info``), compare ONNX Runtime with TensorFlow on ``check_images``, and
    only then record the export in the model folder; raises ModelError when they disagree."""
    data = export_onnx(with_features(model))
    expected, expected_features = ProbabilityPredictor(model, features=True).with_features(check_images)
    exported, exported_features = OnnxPredictor(data, len(info.class_names)).with_features(check_images)
    difference = float(np.abs(exported - expected).max()) if len(check_images) else 0.0
    if difference > PARITY_TOLERANCE:
        raise ModelError(f"the ONNX export of {info.version} differs from TensorFlow by {difference:.2e} "
                         f"(tolerance {PARITY_TOLERANCE:g}); not kept")
    scale = float(np.abs(expected_features).max()) if len(check_images) else 1.0
    feature_difference = float(np.abs(exported_features - expected_features).max()) / max(scale, 1e-6) \
        if len(check_images) else 0.0
    return attach_onnx(info, data, {"opset": OPSET, "parity_images": int(len(check_images)),
                                    "parity_max_abs_difference": difference, "outputs": ["probabilities", "features"],
                                    "features_max_relative_difference": feature_difference})
