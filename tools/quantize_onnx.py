"""Try int8 quantization of a model's ONNX export: speed on this CPU and the model card's validation metrics.

    python -m tools.quantize_onnx --model models/mri-bilstm-v2 [--cache DIR] [--write]

Static quantization (ONNX Runtime, QDQ format, int8 weights per channel, uint8 activations calibrated on 256
images of the model's own training split), then, on the model's recorded validation split: accuracy, macro-F1,
recall per class and tumor sensitivity at the model's threshold, for the float32 export and the int8 one, and the
images/s of each on 1 and 2 threads (median of 3), and the share of validation images the model's
out-of-distribution check marks with each graph's features. The rule: ship int8 only if the metrics hold within
0.5 points. ``--write`` then writes ``model.int8.onnx`` beside the model with its sha256 and these figures in
model.json (``jobs.screen --backend onnx-int8`` runs it) and rewrites the model card.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile

import numpy as np

from infra import storage
from infra.ray_runtime import configure_logging, ensure_ray
from model import registry
from model.calibration import apply_temperature
from model.card import write_model_card
from model.ood import OodDetector
from model.metrics import classification_metrics
from model.onnx_runtime import OnnxPredictor
from tools.benchmark import median_rate
from tools.fit_ood import split_arrays

CALIBRATION_IMAGES = 256


class CalibrationImages:
    """ONNX Runtime's calibration data reader: the training images, one batch of 16 at a time."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int = 16):
        self.batches = iter([{input_name: images[start:start + batch]} for start in range(0, len(images), batch)])

    def get_next(self):
        return next(self.batches, None)


def quantized(data: bytes, calibration: np.ndarray, folder: pathlib.Path) -> bytes:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, prepared, target = folder / "float32.onnx", folder / "prepared.onnx", folder / "int8.onnx"
    source.write_bytes(data)
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    import onnxruntime

    input_name = onnxruntime.InferenceSession(str(prepared)).get_inputs()[0].name
    quantize_static(str(prepared), str(target), CalibrationImages(calibration, input_name),
                    quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax)
    return target.read_bytes()


def figures(probabilities: np.ndarray, targets: np.ndarray, threshold: float) -> dict:
    metrics = classification_metrics(probabilities, targets, threshold)
    tumor = metrics["tumor_vs_no_tumor"]
    return {"accuracy": round(metrics["accuracy"], 4), "macro_f1": round(metrics["macro_f1"], 4),
            "recall": {name: round(scores["recall"], 4) for name, scores in metrics["per_class"].items()},
            "tumor_sensitivity": round(tumor["sensitivity"], 4), "specificity": round(tumor["specificity"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/mri-bilstm-v2")
    parser.add_argument("--cache", help="preprocessed-image cache of jobs.retrain (saves decoding the data again)")
    parser.add_argument("--write", action="store_true",
                        help="ship the int8 graph with the model when its metrics hold within 0.5 points")
    args = parser.parse_args()
    configure_logging()
    ensure_ray()
    info = registry.load_model_info(args.model)
    (train, _, _), (images, targets, _) = split_arrays(info, args.cache)
    chosen = np.random.default_rng(0).choice(len(train), CALIBRATION_IMAGES, replace=False)
    data = storage.read_bytes(info.onnx_uri)
    with tempfile.TemporaryDirectory() as scratch:
        int8 = quantized(data, train[chosen], pathlib.Path(scratch))
    classes = len(info.class_names)
    detector = OodDetector.for_model(info)
    report = {"model": info.version, "validation_images": len(images), "calibration_images": CALIBRATION_IMAGES}
    for name, graph in (("float32", data), ("int8", int8)):
        one, two = (OnnxPredictor(graph, classes, 1.0, threads, 64) for threads in (1, 2))
        raw, features = one.with_features(images)
        report[name] = {"bytes": len(graph), "images_per_second_1_thread": median_rate(one, images[:512]),
                        "images_per_second_2_threads": median_rate(two, images[:512]),
                        **figures(apply_temperature(raw, info.temperature), targets, info.threshold)}
        if detector is not None and features is not None:
            report[name]["validation_marked_unfamiliar"] = round(float(detector.marks(detector.scores(features))
                                                                       .mean()), 4)
    report["metrics_hold"] = all(abs(report["int8"][name] - report["float32"][name]) <= 0.005
                                 for name in ("accuracy", "macro_f1", "tumor_sensitivity", "specificity"))
    print(json.dumps(report, indent=2))
    if args.write:
        if not report["metrics_hold"]:
            raise SystemExit("int8 metrics are more than 0.5 points from float32: not shipped")
        registry.attach_file(info, "onnx_int8", registry.ONNX_INT8_FILE, int8, {"measured": report})
        write_model_card(info.uri)


if __name__ == "__main__":
    main()
