"""A committed night's findings written to a folder, the night committed straight through the results store (no Ray,
no scoring): the rows point at the sample archive's real DICOM files. What each kind of series comes to: stored; a
deciding file replaced by another series' or gone is counted as failed, its reason naming the file by reference
only; a flagged image outside any series and a series without a verdict are skipped; a run that is not there, or a
missing key, refuses to start."""

import datetime
import logging

import pydicom
import pytest

from pipeline import schema as col
from pipeline.dicomweb.delivery import deliver_findings
from pipeline.dicomweb.destination import Destination
from pipeline.errors import RunNotStartedError
from pipeline.pseudonym import PseudonymKeyError, pseudonymize, validate_key
from tests.conftest import SAMPLES, TEST_KEY
from tests.dicomweb.conftest import series_files
from tests.support.nights import commit_night

KEY = validate_key(TEST_KEY)
RUN_ID, RUN_DATE = "20261203T010000Z-0a0b0c0d", "2026-12-03"
SCORED_AT = datetime.datetime(2026, 12, 3, 1, 0, tzinfo=datetime.timezone.utc)
PROBABILITIES = dict(zip(col.PROBABILITY_COLUMNS, (0.7, 0.1, 0.15, 0.05)))


def series(name: str, deciding, series_uid: str | None = None, flagged: bool | None = True) -> tuple[dict, dict]:
    """A series row whose deciding slice is ``deciding`` (a path), keyed by ``series_uid`` (default: the file's own
    SeriesInstanceUID), and that slice's prediction row."""
    uid = series_uid or pydicom.dcmread(deciding, stop_before_pixels=True).SeriesInstanceUID
    row = {col.SERIES_KEY: pseudonymize(uid, KEY, "series"), col.FLAGGED: flagged, col.MODEL_VERSION: "v",
           col.TUMOR_PROBABILITY: None if flagged is None else 0.8, col.PREDICTED_CLASS: "glioma",
           col.MOST_SUSPICIOUS_SLICE_INDEX: None if flagged is None else 0, col.ORDERED_SOURCE_URIS: [str(deciding)],
           col.ORDERED_FRAME_INDICES: [0], col.SLICE_ORDER: name}
    prediction = {col.SOURCE_URI: str(deciding), col.FRAME_INDEX: 0, col.SCORED_AT: SCORED_AT,
                  col.STATUS: col.STATUS_OK, col.SERIES_KEY: row[col.SERIES_KEY], **PROBABILITIES}
    return row, prediction


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> str:
    """One night: a flagged glioma series; one whose deciding file now holds another series; one whose file is gone;
    one without a verdict; a flagged JPEG outside any series."""
    output = str(tmp_path_factory.mktemp("night") / "results")
    glioma = series_files("axial-glioma")[2]
    rows = [series("stored", glioma), series("replaced", glioma, series_uid="1.2.3.4"),
            series("gone", tmp_path_factory.mktemp("gone") / "IM0001.dcm", series_uid="1.2.3.5"),
            series("no verdict", series_files("axial-notumor-rle")[0], flagged=None)]
    loose = next((SAMPLES / "archive" / "loose").glob("*.jpg"))
    image = {col.SOURCE_URI: str(loose), col.FRAME_INDEX: 0, col.STATUS: col.STATUS_OK, col.FLAGGED: True,
             col.SCORED_AT: SCORED_AT, **PROBABILITIES}
    commit_night(output, RUN_ID, RUN_DATE, [prediction for _, prediction in rows] + [image],
                 [row for row, _ in rows], SCORED_AT, run={col.MODEL_VERSION: "v", col.THRESHOLD: 0.2})
    return output


def test_each_series_is_stored_failed_or_skipped_and_a_failure_names_its_file_by_reference(night, tmp_path, caplog):
    folder = tmp_path / "findings"
    with caplog.at_level(logging.INFO):
        delivered = deliver_findings(night, None, Destination(str(folder)), "flagged", KEY)
    assert (delivered.run_id, delivered.stored, delivered.failed, delivered.skipped) == (RUN_ID, 1, 2, 1)
    report, = (pydicom.dcmread(path) for path in folder.iterdir())
    assert report.PatientID == pydicom.dcmread(series_files("axial-glioma")[2]).PatientID
    assert "no longer holds the series it was scored in" in caplog.text
    assert "IM0001.dcm cannot be read again (StorageError)" not in caplog.text  # by reference, never the path
    assert "f-" in caplog.text and str(SAMPLES) not in caplog.text and "gone" not in caplog.text
    assert f"run {RUN_ID}: findings (flagged series) to {folder}: 1 series stored (1 objects), 2 failed, " \
           f"1 skipped" in caplog.text
    everything = deliver_findings(night, RUN_ID, Destination(str(folder)), "all", KEY)
    assert (everything.stored, everything.failed, everything.skipped) == (1, 2, 2)  # the series without a verdict


def test_an_unknown_run_or_a_missing_key_refuses_to_start(night, tmp_path):
    with pytest.raises(RunNotStartedError, match="no committed run 'nope'"):
        deliver_findings(night, "nope", Destination(str(tmp_path)), "flagged", KEY)
    with pytest.raises(PseudonymKeyError, match="needs the pseudonym key the run used"):
        deliver_findings(night, RUN_ID, Destination(str(tmp_path)), "flagged", None)
