"""The ONNX Runtime backends: the shipped models' exports give TensorFlow's probabilities on the sample archive
(within 1e-4), through the real inference stage; an export is verified by its sha256 before it is loaded; a model
without one is refused for --backend onnx with what to do; and the export a retraining run makes is checked and
recorded."""

import shutil

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
from pipeline.screen import ScreenConfig, prepare
from pipeline.stages import ONNX, ONNX_INT8, TENSORFLOW, InferenceActor, StageContext, file_rows, rows_to_table
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


@pytest.mark.parametrize("version", ("mri-bilstm-ensemble-v3", "mri-bilstm-v2"))
def test_the_int8_export_agrees_with_float32_on_the_sample_archive(version):
    info = registry.load_model_info(str(ROOT / "models" / version))
    batch = sample_batch(info)
    scored = {backend: InferenceActor(info.uri, info.weights_sha256, 0.5, 1, False, backend=backend)(batch)
              for backend in (ONNX, ONNX_INT8)}
    tumor = {backend: np.array(table[col.TUMOR_PROBABILITY].to_pylist(), dtype=np.float64)
             for backend, table in scored.items()}
    assert np.abs(tumor[ONNX_INT8] - tumor[ONNX]).max() <= 0.05  # int8 rounding, not a different model
    agree = np.mean(np.array(scored[ONNX][col.PREDICTED_CLASS].to_pylist(), dtype=object)
                    == np.array(scored[ONNX_INT8][col.PREDICTED_CLASS].to_pylist(), dtype=object))
    assert agree >= 25 / 27
    measured = info.metadata["onnx_int8"]["measured"]
    assert measured["metrics_hold"] and abs(measured["int8"]["accuracy"] - measured["float32"]["accuracy"]) <= 0.005


def test_a_model_without_an_int8_export_is_refused_for_that_backend_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PSEUDONYM_KEY", TEST_KEY)
    with pytest.raises(RunNotStartedError, match="tools.quantize_onnx"):
        prepare(ScreenConfig(inputs=(str(SAMPLES / "archive"),), output=str(tmp_path / "out"),
                             model=str(ROOT / "models" / "mri-pool-v1"), backend="onnx-int8"))


def test_on_cpu_auto_runs_int8_only_with_its_own_unfamiliarity_threshold_and_the_actor_uses_it():
    import dataclasses

    from model.ood import OodDetector
    from pipeline.screen import inference_backend

    info = registry.load_model_info(str(ROOT / "models" / "mri-bilstm-v2"))
    auto = ScreenConfig(inputs=("-",), output="-")
    assert inference_backend(auto, info, use_gpu=False) == ONNX_INT8
    assert inference_backend(auto, info, use_gpu=True) == TENSORFLOW
    assert inference_backend(ScreenConfig(inputs=("-",), output="-", backend=ONNX), info, use_gpu=False) == ONNX
    unrefitted = {key: value for key, value in info.metadata["onnx_int8"].items() if key != "ood_threshold"}
    assert inference_backend(auto, dataclasses.replace(info, metadata={**info.metadata, "onnx_int8": unrefitted}),
                             use_gpu=False) == ONNX  # the float32 threshold would mark another share on int8
    pool = registry.load_model_info(str(ROOT / "models" / "mri-pool-v1"))
    assert inference_backend(auto, pool, use_gpu=False) == ONNX  # no int8 graph shipped
    float32, int8 = OodDetector.for_model(info), OodDetector.for_model(info, "onnx_int8")
    assert int8.threshold == info.metadata["onnx_int8"]["ood_threshold"] != float32.threshold
    assert InferenceActor(info.uri, info.weights_sha256, 0.5, 1, False, backend=ONNX_INT8).ood.threshold \
        == int8.threshold
    assert abs(info.metadata["onnx_int8"]["ood_validation_marked"] - info.metadata["ood"]["validation_marked"]) < 0.002
