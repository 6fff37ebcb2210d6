"""Inference backends: which graph scores the images, chosen and checked so that a faster one never changes an answer.

- ``tensorflow``: the Keras weights (GPU actors, and models without an ONNX export).
- ``onnx``: the model's float32 ONNX export on ONNX Runtime, the CPU reference: it gives TensorFlow's probabilities
  to 1e-4 on every CPU, and an actor running it never imports TensorFlow.
- ``onnx-int8``: the int8 quantization of that export, faster, and an approximation whose error depends on the
  data and on the CPU.

``auto`` is TensorFlow on GPUs and, on CPU, the int8 graph only where its record says it earned that on held-out
data (``model.agreement``, measured by ``model.quantize``), else float32 ONNX. Whoever asks for int8 (``auto`` or
``--backend onnx-int8``) gets it only after the start-up check on this CPU: where it disagrees with float32 on the
check images, the predictor falls back to float32 and says so once.
"""

from __future__ import annotations

import logging

from model import agreement, registry
from model.ood import OodDetector

logger = logging.getLogger(__name__)

TENSORFLOW, ONNX, ONNX_INT8 = "tensorflow", "onnx", "onnx-int8"
BACKENDS = (TENSORFLOW, ONNX, ONNX_INT8)
ONNX_EXPORT_OF = {ONNX: "onnx", ONNX_INT8: "onnx_int8"}  # backend -> the model.json key of the graph it runs


def earned_default(info: registry.ModelInfo) -> bool:
    """Whether the model's int8 graph met the agreement rule on every held-out set it was measured on (a graph
    measured before the rule existed has not)."""
    int8 = info.metadata.get("onnx_int8", {})
    return bool(int8.get("sha256") and int8.get("held_out_agreement", {}).get("earns_default"))


def auto_backend(info: registry.ModelInfo, use_gpu: bool) -> str:
    """What ``auto`` runs: TensorFlow on GPUs; on CPU int8 where it earned the default, else float32 ONNX, else
    TensorFlow (a model without an export)."""
    if use_gpu:
        return TENSORFLOW
    if earned_default(info):
        return ONNX_INT8
    return ONNX if info.onnx_sha256 else TENSORFLOW


def make_predictor(info: registry.ModelInfo, backend: str, weights_sha256: str | None = None,
                   cpu_threads: int | None = None, use_gpu: bool = False, batch_size: int = 64):
    """(predictor, detector, backend it runs) for ``backend``: the verified graph, calibrated, with the detector
    threshold of that graph. An int8 graph that fails the start-up check on this CPU is replaced by float32."""
    if backend == TENSORFLOW:  # TensorFlow loads here, never in a process that does not run the network
        from model.predict import ProbabilityPredictor, configure_tensorflow, load_classifier

        configure_tensorflow(cpu_threads, use_gpu)
        predictor = ProbabilityPredictor(load_classifier(info, weights_sha256), batch_size, info.temperature,
                                         features=True)
        return predictor, OodDetector.for_model(info), TENSORFLOW
    predictor, detector = onnx_predictor(info, ONNX_EXPORT_OF[backend], weights_sha256, cpu_threads, batch_size)
    if backend == ONNX_INT8:
        reference, reference_detector = onnx_predictor(info, "onnx", weights_sha256, cpu_threads, batch_size)
        problem = int8_problem(info, (reference, reference_detector), (predictor, detector))
        if problem:
            logger.warning("model %s: %s; scoring with the float32 ONNX graph instead", info.version, problem)
            return reference, reference_detector, ONNX
    return predictor, detector, backend


def onnx_predictor(info: registry.ModelInfo, export: str, weights_sha256: str | None, cpu_threads: int | None,
                   batch_size: int):
    from model.onnx_runtime import OnnxPredictor  # ONNX Runtime only where a graph runs

    return (OnnxPredictor.for_model(info, weights_sha256, cpu_threads, batch_size, export),
            OodDetector.for_model(info, export))


def int8_problem(info: registry.ModelInfo, reference: tuple, candidate: tuple) -> str | None:
    """The start-up check on this CPU: None when the int8 graph answers as float32 on the check images."""
    images = agreement.check_images(info.preprocessing)
    return agreement.startup_check(agreement.answers(*reference, images), agreement.answers(*candidate, images),
                                   info.threshold)


INT8_INSTRUCTION_SETS = ("AVX2", "AVX512F", "AVX512BW", "AVX512VNNI")  # what x86 int8 kernels are chosen by


def cpu_instruction_sets() -> str:
    """Which of the instruction sets x86 int8 kernels depend on this process sees, as NumPy's run-time CPUID
    dispatch detected them (what the CPU reports to programs, also under a hypervisor or an emulator)."""
    try:  # NumPy's record of its dispatch, not a public API: a NumPy without it says nothing rather than fail
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        return "instruction sets unknown (this NumPy does not report them)"
    present = [name for name in INT8_INSTRUCTION_SETS if features.get(name)]
    if not any(features.get(name) for name in ("SSE2", "AVX2", "ASIMD")):
        return "not x86 or Arm (instruction sets not reported)"
    vnni = "" if features.get("AVX512VNNI") or not features.get("SSE2") else " (no AVX-512 VNNI)"
    return f"{', '.join(present) or 'none of ' + ', '.join(INT8_INSTRUCTION_SETS)}{vnni}"


def int8_report(info: registry.ModelInfo, cpu_threads: int | None = None) -> tuple[bool | None, str]:
    """(ok, a sentence): the start-up check of the model's int8 graph on this CPU, and what ``auto`` runs. Not ok
    only where ``auto`` would run int8 and it disagrees here (actors then fall back to float32, slower than
    planned); None for a model without an int8 graph."""
    if not info.export_sha256("onnx_int8"):
        return None, f"model {info.version} ships no int8 graph; auto runs {auto_backend(info, False)}"
    reference = onnx_predictor(info, "onnx", None, cpu_threads, 64)
    problem = int8_problem(info, reference, onnx_predictor(info, "onnx_int8", None, cpu_threads, 64))
    earned = ("it earned the CPU default on held-out data" if earned_default(info)
              else "auto runs float32 ONNX: the int8 graph did not earn the default on held-out data")
    if problem:
        return not earned_default(info), (f"CPU {cpu_instruction_sets()}: {problem}; --backend onnx-int8 falls back "
                                           f"to float32 here; {earned}")
    return True, (f"CPU {cpu_instruction_sets()}: the int8 graph answers as float32 on the "
                  f"{len(agreement.check_images(info.preprocessing))} check images; {earned}")
