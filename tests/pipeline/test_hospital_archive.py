"""A hospital-wide archive through the screening job: CT, ultrasound, nuclear medicine, a report, a dose object, a
secondary capture, a derived MR, a localizer and a knee MRI sit beside the brain MRI series and loose slices, with a
photograph and a blank image among the loose files. Only brain MRI is classified: every other DICOM object ends as
one ``skipped`` row naming its rule and reason, the run counts them by rule, and inputs unlike anything the model was
trained on are marked ``ood`` and never counted as tumor or no tumor."""

import collections
import json
import os
import pathlib
import shutil
import subprocess
import sys

import cv2
import matplotlib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from pipeline.results import tables
from tests.conftest import ROOT, SAMPLES, TEST_KEY, job_summary

pytestmark = pytest.mark.slow

PYDICOM_OBJECTS = {  # pydicom's file -> the rule that must skip it
    "CT_small.dcm": "not_mr",
    "examples_rgb_color.dcm": "not_mr",  # ultrasound
    "JPEG2000.dcm": "not_mr",  # nuclear medicine, whole body
    "SC_rgb_rle.dcm": "not_mr",  # a secondary capture of modality OT
    "reportsi.dcm": "not_mr",  # a structured report
    "rtdose.dcm": "not_mr",  # a radiotherapy dose object
    "MR_small.dcm": "derived",  # an MR marked DERIVED\SECONDARY
}
EDITED_BRAIN_MR = {  # a sample brain MR slice, re-labelled -> the rule that must skip it
    "localizer.dcm": ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"], "SeriesDescription": "3-plane loc"},
                      "localizer"),
    "knee.dcm": ({"BodyPartExamined": "KNEE", "SeriesDescription": "SAG PD FS"}, "not_head"),
}
UNFAMILIAR = ("photograph.jpg", "blank.png")


def edited_brain_mr(changes: dict) -> pydicom.Dataset:
    dataset = pydicom.dcmread(next((SAMPLES / "archive" / "dicom" / "axial-glioma").glob("*.dcm")))
    dataset.SeriesInstanceUID, dataset.SOPInstanceUID = generate_uid(), generate_uid()
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    return dataset


def build_archive(root: pathlib.Path) -> None:
    shutil.copytree(SAMPLES / "archive", root)
    other = root / "hospital"
    other.mkdir()
    for name in PYDICOM_OBJECTS:
        shutil.copy(get_testdata_file(name, download=False), other / name)
    for name, (changes, _) in EDITED_BRAIN_MR.items():
        edited_brain_mr(changes).save_as(other / name, enforce_file_format=True)
    photograph = pathlib.Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    shutil.copy(photograph, root / "loose" / "photograph.jpg")
    cv2.imwrite(str(root / "loose" / "blank.png"), np.zeros((256, 256), np.uint8))


@pytest.fixture(scope="module")
def hospital_run(tmp_path_factory, model_uri):
    base = tmp_path_factory.mktemp("hospital")
    build_archive(base / "archive")
    output = base / "results"
    done = subprocess.run(
        [sys.executable, "-m", "jobs.screen", "--input", str(base / "archive"), "--output", str(output),
         "--model", model_uri, "--run-date", "2026-11-29", "--no-report"],
        cwd=ROOT, env={**os.environ, "PSEUDONYM_KEY": TEST_KEY}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = tables.read_table(str(output), tables.PREDICTIONS).to_pylist()
    return job_summary(done.stdout), {pathlib.Path(row["source_uri"]).name: row for row in rows}, rows, output


def expected_skips() -> dict[str, str]:
    return {**PYDICOM_OBJECTS, **{name: rule for name, (_, rule) in EDITED_BRAIN_MR.items()}}


def test_every_object_that_is_not_brain_mri_is_skipped_with_its_rule_and_reason(hospital_run):
    _, by_name, rows, _ = hospital_run
    for name, rule in expected_skips().items():
        row = by_name[name]
        assert (row["status"], row["selection_rule"]) == ("skipped", rule), name
        assert row["skip_reason"] and row["error_code"] is None, name
        assert row["predicted_class"] is None and row["tumor_probability"] is None and not row["flagged"], name
        assert row["patient_key"] and row["modality"] is not None or rule == "not_mr", name
    assert sum(row["status"] == "skipped" for row in rows) == len(expected_skips())


def test_brain_mri_and_headerless_images_are_classified_under_their_rule(hospital_run):
    _, _, rows, _ = hospital_run
    scored = [row for row in rows if row["status"] == "ok"]
    dicom = {row["selection_rule"] for row in scored if row["file_format"] == "dicom"}
    raster = {row["selection_rule"] for row in scored if row["file_format"] != "dicom"}
    assert dicom == {"brain_mr"} and raster == {"no_header"}
    assert sum(row["file_format"] == "dicom" for row in scored) == 14 + 3  # the sample series' slices and frames


def test_the_run_counts_skips_by_rule(hospital_run):
    summary, _, _, output = hospital_run
    counted = dict(collections.Counter(expected_skips().values()))
    assert summary["skipped_by_reason"] == counted and summary["rows_skipped"] == len(expected_skips())
    run = tables.read_table(str(output), tables.RUNS).to_pylist()[-1]
    assert json.loads(run["skipped_by_reason"]) == counted and run["rows_skipped"] == len(expected_skips())


def test_unfamiliar_inputs_are_marked_and_never_classified(hospital_run):
    summary, by_name, rows, _ = hospital_run
    for name in UNFAMILIAR:
        row = by_name[name]
        assert row["status"] == "ok" and row["ood"] is True and row["ood_score"] is not None, name
        assert row["predicted_class"] is None and row["flagged"] is None, name
    samples = [row for row in rows if row["status"] == "ok" and pathlib.Path(row["source_uri"]).name not in UNFAMILIAR]
    marked = [row for row in samples if row["ood"]]
    # the threshold marks 1% of the training and validation images; the sample archive's 27 brain slices (the
    # highest scores 14.2 against 16.6) are familiar, and one is allowed for among that 1%
    assert len(marked) <= 1 and all(row["ood"] is False for row in samples if row not in marked)
    assert max(row["ood_score"] for row in samples) < min(by_name[name]["ood_score"] for name in UNFAMILIAR)
    assert summary["rows_ood"] == len(UNFAMILIAR) + len(marked)


def test_the_nightly_summary_counts_each_outcome(hospital_run):
    _, _, rows, output = hospital_run
    done = subprocess.run([sys.executable, "-m", "jobs.query", "summary", "--by-class", "--format", "json",
                           "--results", str(output)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    outcomes = {row["outcome"]: row["images"] for row in json.loads(done.stdout)}
    for rule, count in collections.Counter(expected_skips().values()).items():
        assert outcomes[f"skipped: {rule}"] == count
    assert outcomes["unfamiliar"] == sum(bool(row["ood"]) for row in rows)
    assert None not in outcomes and sum(outcomes.values()) == len(rows)
