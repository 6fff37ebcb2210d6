"""What the DICOMweb tests write: findings built from rows shaped as the results tables hold them, about real sample
DICOM series (their headers read as the writer gets them, without pixels)."""

import datetime
import pathlib

import pydicom
import pytest

from pipeline import schema as col
from pipeline.dicomweb.client import ClientSettings, Credentials, dicomweb_client
from pipeline.dicomweb.findings import ScreeningModel, SeriesFinding
from tests.conftest import SAMPLES

DICOM = SAMPLES / "archive" / "dicom"
RUN_ID = "20261202T010909Z-f11c5036"
RUN_DATE = "2026-12-02"
SCORED_AT = datetime.datetime(2026, 12, 2, 1, 9, 9, tzinfo=datetime.timezone.utc)


def series_files(name: str) -> list[pathlib.Path]:
    return sorted((DICOM / name).glob("*.dcm"))


def read_header(path: pathlib.Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def series_rows(files: list[pathlib.Path], deciding: int, frame: int = 0, flagged: bool = True,
                probabilities: tuple[float, ...] = (0.81, 0.06, 0.08, 0.05)) -> tuple[dict, dict]:
    """A ``series`` row over ``files`` whose slice ``deciding`` decided, and that slice's ``predictions`` row."""
    uris = [str(path) for path in files]
    frames = [frame if index == deciding else 0 for index in range(len(files))]
    series = {col.RUN_ID: RUN_ID, col.RUN_DATE: RUN_DATE, col.FLAGGED: flagged, col.TUMOR_PROBABILITY: 0.74,
              col.PREDICTED_CLASS: "glioma" if flagged else "notumor", col.MOST_SUSPICIOUS_SLICE_INDEX: deciding,
              col.ORDERED_SOURCE_URIS: uris, col.ORDERED_FRAME_INDICES: frames, col.MODEL_VERSION: "test-model-v1"}
    prediction = {col.RUN_ID: RUN_ID, col.SOURCE_URI: uris[deciding], col.FRAME_INDEX: frame,
                  col.SCORED_AT: SCORED_AT, **dict(zip(col.PROBABILITY_COLUMNS, probabilities))}
    return series, prediction


@pytest.fixture(scope="session")
def screening_model() -> ScreeningModel:
    return ScreeningModel.from_run({col.MODEL_VERSION: "mri-bilstm-ensemble-v4", col.THRESHOLD: 0.18084074394607544})


@pytest.fixture(scope="session")
def glioma_case() -> tuple[SeriesFinding, pydicom.Dataset]:
    """The flagged glioma series of the sample archive: its finding and its deciding slice's header."""
    files = series_files("axial-glioma")
    series, prediction = series_rows(files, deciding=2)
    return SeriesFinding.from_rows(series, prediction), read_header(files[2])


def client_of(server, password: str | None = None, **settings):
    """A DICOMweb client of the test PACS ``server`` as its test user (with ``password`` when given: a wrong one)."""
    credentials = Credentials(server.user, password or server.password, source="the test's credentials")
    return dicomweb_client(ClientSettings(server.dicomweb_url, **settings), credentials)
