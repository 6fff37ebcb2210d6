"""int8 quantization of a model's ONNX export, measured before it ships.

Static quantization with ONNX Runtime: QDQ format, int8 weights per channel, uint8 activations calibrated (min-max)
on ``CALIBRATION_IMAGES`` of the model's training images. The float32 and int8 graphs are then measured on the
validation images at the model's temperature and threshold: accuracy, macro-F1, recall per class, tumor sensitivity
and specificity, the share the out-of-distribution check marks, and images/s on 1 and 2 threads. The int8 graph
ships (``model.int8.onnx``, sha256 and figures in model.json) only when accuracy, macro-F1, sensitivity and
specificity are each within ``TOLERANCE`` of float32. int8 rounding moves the unfamiliarity scores, so the
detector's threshold is refitted on the int8 graph's validation features at the detector's own quantile
(``ood_threshold`` in the record, which ``OodDetector.for_model(info, "onnx_int8")`` reads): the int8 path marks the
share of validation images float32 marks. ``jobs.retrain`` quantizes every candidate;
``tools.quantize_onnx`` does it for an existing model.

Validation images come from the sources the graph was calibrated on, so holding there says little about another
hospital's MRI (or another CPU). The int8 graph is therefore also measured against float32 on held-out sets
(``model.heldout``) under ``model.agreement``'s rule, and the verdict is recorded (``held_out_agreement``): only a
graph that earns it there is run by ``--backend auto`` (``model.backends``). The shipped graphs did not earn it.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import tempfile
import time
from typing import Callable

import numpy as np

from infra import storage
from infra.logs import logger_at
from model import registry
from model.calibration import apply_temperature
from model.metrics import classification_metrics
from model.onnx_runtime import OnnxPredictor
from model.ood import DEFAULT_QUANTILE, OodDetector
from model.agreement import answers, agreement, verdict

logger = logging.getLogger(__name__)

CALIBRATION_IMAGES = 256
TOLERANCE = 0.005  # half a point
HELD_FIGURES = ("accuracy", "macro_f1", "tumor_sensitivity", "specificity")


class CalibrationImages:
    """ONNX Runtime's calibration data reader: the images, one batch of 16 at a time."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int = 16):
        self.batches = iter([{input_name: images[start:start + batch]} for start in range(0, len(images), batch)])

    def get_next(self):
        return next(self.batches, None)


def quantized(data: bytes, calibration: np.ndarray) -> bytes:
    """The float32 graph ``data`` quantized to int8, its activations calibrated on ``calibration`` images."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as scratch:
        source, prepared, target = (pathlib.Path(scratch) / name for name in ("float32.onnx", "prepared.onnx",
                                                                              "int8.onnx"))
        source.write_bytes(data)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        input_name = onnxruntime.InferenceSession(str(prepared)).get_inputs()[0].name
        with logger_at(logging.WARNING):  # the quantizer logs a line per bias it copies, on the root logger
            quantize_static(str(prepared), str(target), CalibrationImages(calibration, input_name),
                            quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                            activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax)
        return target.read_bytes()


def median_rate(predictor, images: np.ndarray, repeats: int = 3) -> float:
    """Images/s of ``predictor`` on ``images``, the median of ``repeats`` calls after one warm-up batch."""
    predictor(images[:64])
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        predictor(images)
        seconds.append(time.perf_counter() - started)
    return round(len(images) / float(np.median(seconds)), 1)


def figures(probabilities: np.ndarray, targets: np.ndarray, threshold: float) -> dict:
    """The figures a graph is judged by, from calibrated probabilities."""
    metrics = classification_metrics(probabilities, targets, threshold)
    tumor = metrics["tumor_vs_no_tumor"]
    return {"accuracy": round(metrics["accuracy"], 4), "macro_f1": round(metrics["macro_f1"], 4),
            "recall": {name: round(scores["recall"], 4) for name, scores in metrics["per_class"].items()},
            "tumor_sensitivity": round(tumor["sensitivity"], 4), "specificity": round(tumor["specificity"], 4)}


def measure(info: registry.ModelInfo, graph: bytes, images: np.ndarray, targets: np.ndarray) -> dict:
    one, two = (OnnxPredictor(graph, len(info.class_names), 1.0, threads, 64) for threads in (1, 2))
    raw, features = one.with_features(images)
    measured = {"bytes": len(graph), "images_per_second_1_thread": median_rate(one, images[:512]),
                "images_per_second_2_threads": median_rate(two, images[:512]),
                **figures(apply_temperature(raw, info.temperature), targets, info.threshold)}
    detector = OodDetector.for_model(info)
    if detector is not None and features is not None:
        measured["validation_marked_unfamiliar"] = round(float(detector.marks(detector.scores(features)).mean()), 4)
    return measured


def refitted_ood_threshold(info: registry.ModelInfo, graph: bytes, images: np.ndarray,
                           describe: Callable | None = None) -> dict:
    """The unfamiliarity threshold refitted on ``graph``'s features of the validation ``images``, at the quantile
    the float32 threshold was fitted at, and the share it marks; empty for a model without a detector.
    ``describe(detector, features_of, validation_scores)``, when given, measures the refitted detector on images
    that are not brain MRI (``tools.fit_ood.measure_detector``), recorded as ``ood_measured``."""
    detector = OodDetector.for_model(info)
    if detector is None:
        return {}
    predictor = OnnxPredictor(graph, len(info.class_names), 1.0, None, 64)
    scores = detector.scores(predictor.with_features(images)[1])
    threshold = float(np.quantile(scores, info.metadata["ood"].get("quantile", DEFAULT_QUANTILE)))
    refitted = {"ood_threshold": threshold, "ood_validation_marked": round(float((scores > threshold).mean()), 4)}
    if describe is not None:
        refitted["ood_measured"] = describe(dataclasses.replace(detector, threshold=threshold),
                                            lambda batch: predictor.with_features(batch)[1], scores)
    return refitted


def refit_ood(info: registry.ModelInfo, images: np.ndarray, describe: Callable | None = None) -> registry.ModelInfo:
    """Refit the shipped int8 graph's unfamiliarity threshold on the validation ``images`` without quantizing
    again (for a model quantized before thresholds were refitted)."""
    data = storage.read_bytes(info.export_uri("onnx_int8"))
    registry.verify_onnx(info, data, "onnx_int8")
    record = {key: value for key, value in info.metadata["onnx_int8"].items() if key not in ("file", "sha256")}
    record.update(refitted_ood_threshold(info, data, images, describe))
    return registry.attach_file(info, "onnx_int8", info.metadata["onnx_int8"]["file"], data, record)


def held_out_agreement(info: registry.ModelInfo, int8: bytes, ood_threshold: float | None,
                       sets: dict[str, np.ndarray]) -> dict:
    """``model.agreement``'s verdict on the int8 graph ``int8`` (with its unfamiliarity threshold) against the
    model's float32 export, on each held-out set."""
    data = storage.read_bytes(info.onnx_uri)
    registry.verify_onnx(info, data)
    reference = OnnxPredictor(data, len(info.class_names), info.temperature, None, 64)
    candidate = OnnxPredictor(int8, len(info.class_names), info.temperature, None, 64)
    detector = OodDetector.for_model(info)
    int8_detector = (dataclasses.replace(detector, threshold=ood_threshold)
                     if detector is not None and ood_threshold is not None else detector)
    per_set = {name: agreement(answers(reference, detector, images), answers(candidate, int8_detector, images),
                               info.threshold) for name, images in sets.items()}
    return verdict(per_set)


def attach_agreement(info: registry.ModelInfo, sets: dict[str, np.ndarray]) -> registry.ModelInfo:
    """Measure the shipped int8 graph on ``sets`` and record the verdict beside it, the graph unchanged."""
    data = storage.read_bytes(info.export_uri("onnx_int8"))
    registry.verify_onnx(info, data, "onnx_int8")
    record = {key: value for key, value in info.metadata["onnx_int8"].items() if key not in ("file", "sha256")}
    record["held_out_agreement"] = held_out_agreement(info, data, record.get("ood_threshold"), sets)
    return registry.attach_file(info, "onnx_int8", info.metadata["onnx_int8"]["file"], data, record)


def quantize_and_attach(info: registry.ModelInfo, train_images: np.ndarray, val_images: np.ndarray,
                        val_targets: np.ndarray, write: bool = True,
                        held_out: dict[str, np.ndarray] | None = None) -> tuple[registry.ModelInfo, dict]:
    """Quantize the model's ONNX export, measure both graphs on the validation images, and (``write``) ship the
    int8 graph beside the model when its figures hold, with its verdict on the ``held_out`` sets (``auto`` runs
    it only where that verdict says so); returns the model and the report."""
    chosen = np.random.default_rng(0).choice(len(train_images), min(CALIBRATION_IMAGES, len(train_images)),
                                             replace=False)
    data = storage.read_bytes(info.onnx_uri)
    registry.verify_onnx(info, data)
    int8 = quantized(data, train_images[np.sort(chosen)])
    report = {"calibration_images": len(chosen), "validation_images": len(val_images),
              "float32": measure(info, data, val_images, val_targets),
              "int8": measure(info, int8, val_images, val_targets)}
    report["metrics_hold"] = all(abs(report["int8"][name] - report["float32"][name]) <= TOLERANCE
                                 for name in HELD_FIGURES)
    logger.info("int8 export: accuracy %.4f against %.4f, %.0f against %.0f images/s on one thread; %s",
                report["int8"]["accuracy"], report["float32"]["accuracy"], report["int8"]["images_per_second_1_thread"],
                report["float32"]["images_per_second_1_thread"],
                "shipped" if report["metrics_hold"] and write else "not shipped")
    if write and report["metrics_hold"]:
        refitted = refitted_ood_threshold(info, int8, val_images)
        judged = held_out_agreement(info, int8, refitted.get("ood_threshold"), held_out or {})
        logger.info("int8 export on held-out sets: %s", "earns the CPU default" if judged["earns_default"] else
                    f"not the CPU default (fails on {', '.join(judged['failing_sets']) or 'no set measured'})")
        info = registry.attach_file(info, "onnx_int8", registry.ONNX_INT8_FILE, int8,
                                    {"measured": report, **refitted, "held_out_agreement": judged})
    return info, report
