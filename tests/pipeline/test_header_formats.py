"""A name in the header elements that are stored or quoted (StudyDate, Modality, BodyPartExamined, ImageType),
through the real screening job: files written by pydicom, the job as a subprocess with its own Ray and its report,
and then every file of the output read back (table rows, the Delta logs with their column statistics, the report)
without finding the name."""

import os
import pathlib
import subprocess
import sys
import warnings

import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.uid import generate_uid

from pipeline.results import tables
from tests.conftest import ROOT, SAMPLES, TEST_KEY
from tests.code.test_header_values import NAME, NAME_PARTS

pytestmark = pytest.mark.slow

SERIES = SAMPLES / "archive" / "dicom" / "axial-glioma"
EDITS = {  # a sample brain MR slice, a name written into an element -> its rule
    "modality.dcm": ({"Modality": NAME}, "not_mr"),
    "body-part.dcm": ({"BodyPartExamined": NAME}, "not_head"),
    "image-type.dcm": ({"ImageType": ["DERIVED", "PRIMARY", NAME]}, "derived"),
}


def save(dataset: pydicom.Dataset, path: pathlib.Path, changes: dict) -> None:
    with warnings.catch_warnings():  # pydicom warns about, and writes, values outside their VR's format
        warnings.simplefilter("ignore")
        for keyword, value in changes.items():
            setattr(dataset, keyword, value)
        dataset.save_as(path, enforce_file_format=True)


def build_archive(root: pathlib.Path) -> None:
    """The sample series with the name as every slice's StudyDate, and one slice of it for each of ``EDITS``."""
    (root / "series").mkdir(parents=True)
    (root / "edited").mkdir()
    for path in sorted(SERIES.glob("*.dcm")):
        save(pydicom.dcmread(path), root / "series" / path.name, {"StudyDate": NAME})
    for name, (changes, _) in EDITS.items():
        dataset = pydicom.dcmread(next(SERIES.glob("*.dcm")))
        save(dataset, root / "edited" / name,
             {**changes, "SeriesInstanceUID": generate_uid(), "SOPInstanceUID": generate_uid()})


def output_texts(output: pathlib.Path) -> dict[str, str]:
    """Every file under the output as text: Parquet files (table data, Delta checkpoints) as their rows' values,
    the rest (Delta log entries with their statistics, the report) as they are."""
    texts = {}
    for path in sorted(output.rglob("*")):
        if path.is_file() and path.suffix == ".parquet":
            texts[str(path)] = str(pq.read_table(path).to_pylist())
        elif path.is_file():
            texts[str(path)] = path.read_bytes().decode("latin-1")
    return texts


def test_a_name_in_a_stored_header_element_reaches_no_output_file(tmp_path, model_uri):
    build_archive(tmp_path / "archive")
    output = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "jobs.screen", "--input", str(tmp_path / "archive"), "--output", str(output),
         "--model", model_uri, "--run-date", "2026-11-30"],
        cwd=ROOT, env={**os.environ, "PSEUDONYM_KEY": TEST_KEY}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {pathlib.Path(row["source_uri"]).name: row
            for row in tables.read_table(str(output), tables.PREDICTIONS).to_pylist()}
    for name, (_, rule) in EDITS.items():
        assert (rows[name]["status"], rows[name]["selection_rule"]) == ("skipped", rule), name
        assert "(invalid code string)" in rows[name]["skip_reason"], name
    series = [rows[path.name] for path in SERIES.glob("*.dcm")]
    assert {row["status"] for row in series} == {"ok"} and {row["study_date"] for row in series} == {None}
    texts = output_texts(output)
    assert any(path.endswith(".html") for path in texts) and any("_delta_log" in path for path in texts)
    leaks = [(path, part) for path, text in texts.items() for part in NAME_PARTS if part in text.upper()]
    assert not leaks
