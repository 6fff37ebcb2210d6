"""Exporting a trained classifier to ONNX (``tf2onnx``, opset 17), checked against TensorFlow before it is kept.

The export is the whole inference graph of the Keras model: uint8 images in, softmax probabilities out (the
augmentation layers are training-only and not part of it). It is refused when ONNX Runtime's probabilities differ
from TensorFlow's by more than ``PARITY_TOLERANCE`` on the check images.
"""

from __future__ import annotations

import numpy as np

from model.onnx_runtime import OnnxPredictor
from model.predict import ProbabilityPredictor
from model.registry import ModelError, ModelInfo, attach_onnx
from model.tensorflow_runtime import tf

OPSET = 17
PARITY_TOLERANCE = 1e-4


def export_onnx(model) -> bytes:
    """The serialized ONNX graph of a tf_keras classifier."""
    import tf2onnx

    spec = [tf.TensorSpec((None, *model.inputs[0].shape[1:]), model.inputs[0].dtype, name="images")]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    return proto.SerializeToString()


def export_and_attach(model, info: ModelInfo, check_images: np.ndarray) -> ModelInfo:
    """Export ``model`` (the network of ``info``), compare ONNX Runtime with TensorFlow on ``check_images``, and
    only then record the export in the model folder; raises ModelError when they disagree."""
    data = export_onnx(model)
    expected = ProbabilityPredictor(model)(check_images)
    exported = OnnxPredictor(data, len(info.class_names))(check_images)
    difference = float(np.abs(exported - expected).max()) if len(check_images) else 0.0
    if difference > PARITY_TOLERANCE:
        raise ModelError(f"the ONNX export of {info.version} differs from TensorFlow by {difference:.2e} "
                         f"(tolerance {PARITY_TOLERANCE:g}); not kept")
    return attach_onnx(info, data, {"opset": OPSET, "parity_images": int(len(check_images)),
                                    "parity_max_abs_difference": difference})
