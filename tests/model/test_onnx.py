"""The ONNX Runtime backends: the shipped models' exports give TensorFlow's probabilities on the sample archive
(within 1e-4), through the real inference stage; an export is verified by its sha256 before it is loaded; a model
without one is refused for --backend onnx with what to do; and the export a retraining run makes is checked and
recorded."""

import platform
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from model import registry
from model.architecture import build_classifier
from model.config import ArchitectureConfig
from model.decode import DecodeLimits
from model.onnx_runtime import OnnxPredictor
from model.preprocessing import PreprocessConfig
from pipeline import schema as col
from pipeline.errors import RunNotStartedError
from pipeline.screening import ScreenConfig, prepare
from model.backends import ONNX, ONNX_INT8, TENSORFLOW
from pipeline.scoring.stages import InferenceActor, StageContext, file_rows, rows_to_table
from tests.conftest import ROOT, SAMPLES, TEST_KEY

SHIPPED = ("mri-bilstm-ensemble-v3", "mri-bilstm-v2", "mri-pool-v1")


def sample_batch(info: registry.ModelInfo) -> pa.Table:
    """Every frame of the sample archive, decoded and preprocessed as the pipeline hands them to inference."""
    context = StageContext("run", "2026-11-08", info.preprocessing, DecodeLimits(), TEST_KEY.encode(), 0.5,
                           info.version, info.weights_sha256)
    return rows_to_table([row for path in sorted((SAMPLES / "archive").rglob("*")) if path.is_file()
                          for row in file_rows(str(path), context)])


@pytest.mark.parametrize("version", SHIPPED)
def test_onnx_runtime_gives_tensorflows_probabilities_on_the_sample_archive(version):
    info = registry.load_model_info(str(ROOT / "models" / version))
    batch = sample_batch(info)
    scored = {backend: InferenceActor(info.uri, info.weights_sha256, 0.5, 2, False, backend=backend)(batch)
              for backend in (TENSORFLOW, ONNX)}
    columns = [*col.PROBABILITY_COLUMNS, col.TUMOR_PROBABILITY]
    probabilities = {backend: np.array([table[name].to_pylist() for name in columns], dtype=np.float64)
                     for backend, table in scored.items()}
    assert batch.num_rows == 27 and not np.isnan(probabilities[ONNX]).any()
    assert np.abs(probabilities[ONNX] - probabilities[TENSORFLOW]).max() <= 1e-4
    assert scored[ONNX][col.FLAGGED].to_pylist() == scored[TENSORFLOW][col.FLAGGED].to_pylist()
    assert scored[ONNX][col.OOD].to_pylist() == scored[TENSORFLOW][col.OOD].to_pylist()
    if info.metadata.get("ood"):  # the out-of-distribution score reads the export's second output
        ood = {backend: np.array(table[col.OOD_SCORE].to_pylist(), dtype=np.float64) for backend, table in scored.items()}
        assert np.abs(ood[ONNX] - ood[TENSORFLOW]).max() <= 1e-3 * np.abs(ood[TENSORFLOW]).max()


@pytest.mark.parametrize("export", registry.ONNX_EXPORTS)
def test_a_replaced_export_is_refused_before_it_is_loaded(tmp_path, export):
    model = tmp_path / "model"
    shutil.copytree(ROOT / "models" / "mri-bilstm-v2", model)
    path = model / registry.ONNX_EXPORTS[export]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(registry.ModelError, match="corrupt or replaced"):
        OnnxPredictor.for_model(registry.load_model_info(str(model)), export=export)


def test_a_model_without_an_export_is_refused_for_the_onnx_backend_with_what_to_do(tmp_path, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(ROOT / "models" / "mri-lstm-v1", model)
    monkeypatch.setenv("PSEUDONYM_KEY", TEST_KEY)
    with pytest.raises(RunNotStartedError, match="tools.export_onnx"):
        prepare(ScreenConfig(inputs=(str(SAMPLES / "archive"),), output=str(tmp_path / "out"), model=str(model),
                             backend="onnx"))


def test_a_new_models_export_is_checked_against_tensorflow_and_recorded(tmp_path, caplog):
    """A retraining run's export is checked against TensorFlow and recorded; the converter's line per folded node
    stays out of the retraining log."""
    import logging

    from model.onnx_export import export_and_attach

    network = build_classifier(ArchitectureConfig(head="bilstm"), 64)
    info = registry.save_model(network, str(tmp_path / "candidate"), "candidate", ArchitectureConfig(head="bilstm"),
                               PreprocessConfig(image_size=64))
    images = np.random.default_rng(0).integers(0, 256, (8, 64, 64), dtype=np.uint8)
    with caplog.at_level(logging.INFO):
        exported = export_and_attach(network, info, images)
    assert not [record for record in caplog.records
                if record.name.startswith("tf2onnx") and record.levelno < logging.WARNING]  # its warnings stay
    assert exported.metadata["onnx"]["parity_max_abs_difference"] <= 1e-4
    reloaded = registry.load_model_info(str(tmp_path / "candidate"))
    assert reloaded.onnx_sha256 == exported.onnx_sha256 == registry.sha256_hex(
        (tmp_path / "candidate" / registry.ONNX_FILE).read_bytes())
    assert OnnxPredictor.for_model(reloaded)(images).shape == (8, 4)


@pytest.mark.parametrize("version", ("mri-bilstm-ensemble-v4", "mri-bilstm-ensemble-v3", "mri-bilstm-v2"))
def test_the_int8_backend_runs_only_where_it_answers_as_float32_and_auto_keeps_float32(version):
    """On any CPU an int8 predictor either gives float32's answers on the bundled check slices (no decision
    changed, tumor probability within the start-up tolerance), or saw on start-up that it does not and runs
    float32. On other hospitals' slices (the sample archive's series) the shipped int8 graphs move answers more,
    flags included, as their held-out judgement recorded: so ``auto`` runs float32 for them."""
    from model.agreement import answers, check_images, startup_check
    from model.backends import auto_backend, make_predictor

    info = registry.load_model_info(str(ROOT / "models" / version))
    reference, reference_detector, _ = make_predictor(info, ONNX, cpu_threads=1)
    predictor, detector, ran = make_predictor(info, ONNX_INT8, cpu_threads=1)
    images = check_images(info.preprocessing)
    if ran == ONNX_INT8:
        assert startup_check(answers(reference, reference_detector, images), answers(predictor, detector, images),
                             info.threshold) is None
    else:
        assert ran == ONNX
    assert not info.metadata["onnx_int8"]["held_out_agreement"]["earns_default"]
    assert auto_backend(info, use_gpu=False) == ONNX
    measured = info.metadata["onnx_int8"]["measured"]
    assert measured["metrics_hold"] and abs(measured["int8"]["accuracy"] - measured["float32"]["accuracy"]) <= 0.005


@pytest.fixture(scope="module")
def disagreeing_int8_model(tmp_path_factory):
    """mri-bilstm-v2 whose int8 graph was calibrated on blank images: every activation range collapses, so it
    saturates on real slices, as a graph does on a CPU its kernels do not suit. Recorded with its sha256, so only
    the start-up check can catch it."""
    from model.quantize import quantized

    model = tmp_path_factory.mktemp("disagreeing") / "model"
    shutil.copytree(ROOT / "models" / "mri-bilstm-v2", model)
    info = registry.load_model_info(str(model))
    broken = quantized((model / registry.ONNX_FILE).read_bytes(), np.zeros((16, 160, 160), np.uint8))
    record = {key: value for key, value in info.metadata["onnx_int8"].items() if key not in ("file", "sha256")}
    return registry.attach_file(info, "onnx_int8", registry.ONNX_INT8_FILE, broken, record)


def test_an_int8_graph_that_disagrees_on_start_up_is_replaced_by_float32_with_one_warning(disagreeing_int8_model,
                                                                                          caplog):
    import logging

    info = disagreeing_int8_model
    batch = sample_batch(info)
    with caplog.at_level(logging.WARNING):
        actor = InferenceActor(info.uri, info.weights_sha256, info.threshold, 1, False, backend=ONNX_INT8)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert actor.backend == ONNX and len(warnings) == 1
    assert "int8 graph changes" in warnings[0] and "float32 ONNX graph instead" in warnings[0]
    reference = InferenceActor(info.uri, info.weights_sha256, info.threshold, 1, False, backend=ONNX)(batch)
    assert actor(batch).equals(reference)


def test_the_doctor_reports_the_int8_check_with_the_cpus_instruction_sets(disagreeing_int8_model):
    from model.backends import int8_report

    ok, detail = int8_report(disagreeing_int8_model)
    assert ok is True  # auto runs float32 for this model, so the night is not affected
    assert "AVX2" in detail or platform.machine() != "x86_64"
    assert "falls back to float32 here" in detail and "did not earn the default" in detail
    shipped_ok, shipped = int8_report(registry.load_model_info(str(ROOT / "models" / "mri-pool-v1")))
    assert shipped_ok is None and "ships no int8 graph" in shipped


QEMU = shutil.which("qemu-x86_64")
NO_VNNI_CPU = "EPYC-Rome"  # AVX2, no VNNI and no AVX-512, as the AMD EPYC machines without VNNI


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 (Debian's qemu-user) is not installed; .ci/run installs it")
@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates an x86 CPU on x86")
def test_on_a_cpu_without_vnni_the_shipped_int8_graph_falls_back_to_float32():
    """The whole start-up check, run by Python under qemu's user-mode emulation of an AMD EPYC without VNNI, where
    ONNX Runtime picks its AVX2 u8s8 kernels: the shipped int8 graph saturates there, and the check sees it."""
    script = ("import logging, sys; logging.basicConfig(level=logging.WARNING, stream=sys.stdout)\n"
              "from model import registry; from model.backends import make_predictor, cpu_instruction_sets\n"
              f"info = registry.load_model_info({str(ROOT / 'models' / 'mri-bilstm-v2')!r})\n"
              "print('CPU', cpu_instruction_sets()); print('RUNS', make_predictor(info, 'onnx-int8', cpu_threads=1)[2])")
    result = subprocess.run([QEMU, "-cpu", NO_VNNI_CPU, sys.executable, "-c", script], cwd=ROOT, text=True,
                            capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "CPU AVX2 (no AVX-512 VNNI)" in result.stdout
    assert "RUNS onnx\n" in result.stdout and "float32 ONNX graph instead" in result.stdout


def test_a_model_without_an_int8_export_is_refused_for_that_backend_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PSEUDONYM_KEY", TEST_KEY)
    with pytest.raises(RunNotStartedError, match="tools.quantize_onnx"):
        prepare(ScreenConfig(inputs=(str(SAMPLES / "archive"),), output=str(tmp_path / "out"),
                             model=str(ROOT / "models" / "mri-pool-v1"), backend="onnx-int8"))


def test_on_cpu_auto_runs_int8_only_where_it_earned_the_default_on_held_out_data_and_uses_its_threshold():
    import dataclasses

    from model.ood import OodDetector
    from pipeline.screening.scoring import inference_backend

    info = registry.load_model_info(str(ROOT / "models" / "mri-bilstm-v2"))
    auto = ScreenConfig(inputs=("-",), output="-")
    assert not info.metadata["onnx_int8"]["held_out_agreement"]["earns_default"]  # measured: it fails the rule
    assert inference_backend(auto, info, use_gpu=False) == ONNX
    assert inference_backend(auto, info, use_gpu=True) == TENSORFLOW
    assert inference_backend(ScreenConfig(inputs=("-",), output="-", backend=ONNX_INT8), info, False) == ONNX_INT8
    earned = {**info.metadata["onnx_int8"], "held_out_agreement": {"earns_default": True}}
    assert inference_backend(auto, dataclasses.replace(info, metadata={**info.metadata, "onnx_int8": earned}),
                             use_gpu=False) == ONNX_INT8
    pool = registry.load_model_info(str(ROOT / "models" / "mri-pool-v1"))
    assert inference_backend(auto, pool, use_gpu=False) == ONNX  # no int8 graph shipped
    float32, int8 = OodDetector.for_model(info), OodDetector.for_model(info, "onnx_int8")
    assert int8.threshold == info.metadata["onnx_int8"]["ood_threshold"] != float32.threshold
    actor = InferenceActor(info.uri, info.weights_sha256, 0.5, 1, False, backend=ONNX_INT8)
    assert actor.ood.threshold == (int8 if actor.backend == ONNX_INT8 else float32).threshold  # each graph its own
    assert abs(info.metadata["onnx_int8"]["ood_validation_marked"] - info.metadata["ood"]["validation_marked"]) < 0.002
