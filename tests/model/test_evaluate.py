"""The evaluation job on real labelled images with the shipped model: files written, counts and metrics sane."""

import json

import pytest

from jobs.evaluate import main
from model.labels import CLASS_NAMES
from tests.conftest import SAMPLES

pytestmark = pytest.mark.slow


def test_evaluate_writes_metrics_and_confusion_matrix(tmp_path, ray_local):
    assert main(["--data", str(SAMPLES / "labelled"), "--output", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    images = sum(1 for _ in (SAMPLES / "labelled").glob("*/*.jpg"))
    tumor_only = sum(1 for _ in (SAMPLES / "labelled" / "tumor").glob("*.jpg"))
    assert metrics["images"] == images and metrics["known_class_images"] == images - tumor_only
    assert sum(sum(row) for row in metrics["confusion_matrix"]["counts"]) == images - tumor_only
    assert set(metrics["per_class"]) == set(CLASS_NAMES)
    assert 0 <= metrics["expected_calibration_error"] <= 1 and metrics["unknown_type_tumor_sensitivity"]["images"]
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_reports_a_bad_data_folder_without_a_traceback(tmp_path, ray_local, caplog):
    assert main(["--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o")]) == 2
    assert "does not exist" in caplog.text
