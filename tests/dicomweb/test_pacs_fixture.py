"""The test PACS itself: Orthanc answers DICOMweb behind basic auth, refuses a wrong password, and a fault test's own
server can be killed and started again with what it stored."""

import pathlib

import pydicom
import pytest
import requests

from tests.conftest import SAMPLES

SAMPLE_SLICE = sorted((SAMPLES / "archive" / "dicom" / "axial-glioma").glob("*.dcm"))[0]


def test_shared_server_answers_dicomweb_behind_basic_auth(orthanc):
    assert requests.get(orthanc.dicomweb_url + "/studies", auth=orthanc.auth, timeout=5).status_code in (200, 204)
    wrong = requests.get(orthanc.dicomweb_url + "/studies", auth=(orthanc.user, "wrong"), timeout=5)
    assert wrong.status_code == 401
    assert requests.get(orthanc.url + "/system", timeout=5).status_code == 401


def store_file(server, path: pathlib.Path) -> None:
    response = requests.post(server.url + "/instances", data=path.read_bytes(), auth=server.auth, timeout=10)
    response.raise_for_status()


def test_fresh_server_survives_a_kill_and_keeps_what_it_stored(fresh_orthanc):
    store_file(fresh_orthanc, SAMPLE_SLICE)
    fresh_orthanc.kill()
    with pytest.raises(requests.ConnectionError):
        requests.get(fresh_orthanc.url + "/system", auth=fresh_orthanc.auth, timeout=2)
    fresh_orthanc.start()
    study = pydicom.dcmread(SAMPLE_SLICE, stop_before_pixels=True).StudyInstanceUID
    found = requests.get(fresh_orthanc.dicomweb_url + "/studies", params={"StudyInstanceUID": study},
                         auth=fresh_orthanc.auth, timeout=5).json()
    assert len(found) == 1
