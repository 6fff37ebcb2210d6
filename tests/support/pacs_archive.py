"""The sample archive in a PACS, for tests that screen from one: its DICOM files stored in a test Orthanc
(``POST /instances``), a CT series made from its glioma slices inside the same study, a study of CT alone, an
instance deleted as a PACS deletes it, the input a run reads the PACS through, and rows keyed by SOP Instance UID so
a PACS night and a disk night can be set side by side."""

from __future__ import annotations

import json
import pathlib

import pydicom
import requests
from pydicom.uid import generate_uid

from tests.conftest import SAMPLES

SAMPLE_DICOM = SAMPLES / "archive" / "dicom"
SAMPLE_STUDY_DATES = ("2026-11-01", "2026-11-04")  # the sample studies' dates, first and last


def store_files(server, paths) -> None:
    """Each DICOM file stored in ``server`` (an ``OrthancServer``) as it is, byte for byte."""
    for path in paths:
        requests.post(server.url + "/instances", data=pathlib.Path(path).read_bytes(), auth=server.auth,
                      timeout=30).raise_for_status()


def delete_instance(server, sop_instance_uid: str) -> None:
    """Delete one instance from Orthanc, found by its SOP Instance UID."""
    found = requests.post(server.url + "/tools/lookup", data=sop_instance_uid, auth=server.auth, timeout=60).json()
    for item in found:
        requests.delete(f"{server.url}/instances/{item['ID']}", auth=server.auth, timeout=60).raise_for_status()


def made_series(folder: pathlib.Path, source: str, new_study: bool = False, **attributes) -> list[pathlib.Path]:
    """Copies of a sample series' slices under ``folder``, with a new series (and, with ``new_study``, a new study)
    and new SOP Instance UIDs, and ``attributes`` set (Modality="CT", say)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid, written = generate_uid(), generate_uid(), []
    for path in sorted((SAMPLE_DICOM / source).glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if new_study:
            dataset.StudyInstanceUID = study_uid
        for keyword, value in attributes.items():
            setattr(dataset, keyword, value)
        written.append(folder / path.name)
        dataset.save_as(written[-1])
    return written


def sop_instance_uid(path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def pacs_input(url: str) -> str:
    """The input a run reads the PACS at ``url`` (an Orthanc's, or a proxy's in front of it) through."""
    return f"dicomweb+{url}/dicom-web"


def credentials_file(folder: pathlib.Path, server, password: str | None = None) -> str:
    """A credentials file for ``server``'s test user (with ``password`` instead of the real one, when given)."""
    path = folder / "pacs-credentials.json"
    path.write_text(json.dumps({"username": server.user, "password": password or server.password}))
    path.chmod(0o600)
    return str(path)


def by_instance(rows: list[dict], uid_of) -> dict[tuple[str, int], dict]:
    """Prediction rows keyed by (SOP Instance UID, frame); ``uid_of`` finds a row's UID from its ``source_uri``."""
    return {(uid_of(row["source_uri"]), row["frame_index"]): row for row in rows}
