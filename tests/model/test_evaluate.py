"""The evaluation job on real labelled images with the shipped model: files written, counts and metrics sane."""

import json
import pathlib
import shutil

import pytest

from jobs.evaluate import main
from model import registry
from model.labels import CLASS_NAMES
from tests.conftest import SAMPLES

pytestmark = pytest.mark.slow


def test_evaluate_writes_metrics_and_confusion_matrix(tmp_path, ray_local):
    assert main(["--data", str(SAMPLES / "labelled"), "--output", str(tmp_path), "--cache", str(tmp_path / "c")]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    images = sum(1 for _ in (SAMPLES / "labelled").glob("*/*.jpg"))
    tumor_only = sum(1 for _ in (SAMPLES / "labelled" / "tumor").glob("*.jpg"))
    assert metrics["images"] == images and metrics["known_class_images"] == images - tumor_only
    assert sum(sum(row) for row in metrics["confusion_matrix"]["counts"]) == images - tumor_only
    assert set(metrics["per_class"]) == set(CLASS_NAMES)
    assert 0 <= metrics["expected_calibration_error"] <= 1 and metrics["unknown_type_tumor_sensitivity"]["images"]
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert metrics["backend"] == "onnx" and 0 <= metrics["marked_unfamiliar"] <= images  # what jobs.screen runs


def test_evaluation_through_the_default_backend_gives_tensorflows_figures(tmp_path, ray_local):
    figures = {}
    for backend in ("auto", "tensorflow"):
        assert main(["--data", str(SAMPLES / "labelled"), "--output", str(tmp_path / backend), "--backend", backend,
                     "--cache", str(tmp_path / "c")]) == 0
        figures[backend] = json.loads((tmp_path / backend / "metrics.json").read_text())
    assert figures["tensorflow"]["backend"] == "tensorflow"
    for name in ("accuracy", "macro_f1", "marked_unfamiliar"):
        assert figures["auto"][name] == figures["tensorflow"][name]


def test_evaluate_reports_a_bad_data_folder_without_a_traceback(tmp_path, ray_local, caplog):
    assert main(["--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o")]) == 2
    assert "does not exist" in caplog.text


def test_evaluation_on_the_models_own_training_images_is_flagged(tmp_path, ray_local, capsys):
    """A model whose recorded training data holds half of the evaluation images: those are counted as seen, and the
    metrics are reported on the other half too."""
    shipped = pathlib.Path(registry.resolve_model_dir(registry.DEFAULT_MODEL))
    model = tmp_path / "model"
    shutil.copytree(shipped, model)
    trained_on = tmp_path / "trained-on"
    seen = 0
    for name in CLASS_NAMES:
        (trained_on / name).mkdir(parents=True)
        for path in sorted((SAMPLES / "labelled" / name).glob("*.jpg"))[::2]:
            shutil.copy(path, trained_on / name / path.name)
            seen += 1
    record = json.loads((model / "model.json").read_text())
    record["training"]["data"], record["training"]["tumor_data"] = str(trained_on), []
    (model / "model.json").write_text(json.dumps(record))
    assert main(["--data", str(SAMPLES / "labelled"), "--model", str(model), "--output", str(tmp_path / "eval"),
                 "--cache", str(tmp_path / "cache")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["training_overlap"]["checked"] and metrics["training_overlap"]["near_duplicates"] == seen
    assert metrics["unseen_images_only"]["images"] == metrics["images"] - seen
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["near_duplicates_of_training_data"] == seen and summary["overlap_checked"] is True


def test_another_hospitals_folder_of_some_classes_is_judged_per_sequence_folder(tmp_path, ray_local):
    """A folder laid out as another hospital's slices come (``glioma/<sequence>/``, ``notumor/<sequence>/``, and
    the glioma masks in ``glioma/mask/``): only two classes, judged as a night would show them per sequence; the
    masks are never scored."""
    site = tmp_path / "site"
    copied = {}
    for label, sequence in (("glioma", "flair"), ("glioma", "t1pre"), ("notumor", "flair"), ("notumor", "t1pre")):
        folder = site / label / sequence
        folder.mkdir(parents=True)
        sources = sorted((SAMPLES / "labelled" / label).glob("*.jpg"))[:3 if sequence == "flair" else 2]
        for path in sources:
            shutil.copy(path, folder / path.name)
        copied[(label, sequence)] = len(sources)
    (site / "glioma" / "mask").mkdir()
    shutil.copy(next((SAMPLES / "archive" / "loose").glob("*.png")), site / "glioma" / "mask" / "m.png")
    assert main(["--data", str(site), "--output", str(tmp_path / "eval"), "--cache", str(tmp_path / "c")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == sum(copied.values())  # the mask is not an image to classify
    by_folder = metrics["by_folder"]
    assert set(by_folder) == {"flair", "t1pre"}
    for sequence in ("flair", "t1pre"):
        figures = by_folder[sequence]
        assert figures["tumor_images"] == copied[("glioma", sequence)]
        assert figures["no_tumor_images"] == copied[("notumor", sequence)]
        assert 0 <= figures["sensitivity"] <= 1 and 0 <= figures["specificity"] <= 1
        assert set(figures["class_recall"]) <= {"glioma", "notumor"}
