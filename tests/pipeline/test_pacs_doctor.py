"""``jobs.doctor``'s input check on a PACS input, against a real Orthanc: it passes when the PACS answers, accepts the
credentials, finds an instance and serves it, and otherwise says which of these failed, never showing the
password."""

from pipeline.doctor import DoctorConfig, check_input, guarded
from tests.support.pacs_archive import SAMPLE_DICOM, credentials_file, pacs_input, store_files

WRONG = "not-the-password-4kd8"


def checked(server, tmp_path, password: str | None = None):
    config = DoctorConfig(inputs=(pacs_input(server.url),),
                          dicomweb_credentials_file=credentials_file(tmp_path, server, password))
    return guarded("input", check_input, config)


def test_the_doctor_finds_a_pacs_reachable_authorised_searchable_and_serving(fresh_orthanc, tmp_path):
    empty = checked(fresh_orthanc, tmp_path)
    assert empty.ok is False and "finds no study holding MR" in empty.detail
    store_files(fresh_orthanc, sorted((SAMPLE_DICOM / "axial-glioma").glob("*.dcm")))
    sound = checked(fresh_orthanc, tmp_path)
    assert sound.ok and "accepts the credentials and is searchable; retrieved dicomweb+http://" in sound.detail
    refused = checked(fresh_orthanc, tmp_path, WRONG)
    assert refused.ok is False and "refused the credentials" in refused.detail and WRONG not in refused.detail
    fresh_orthanc.kill()
    gone = checked(fresh_orthanc, tmp_path)
    assert gone.ok is False and "did not answer (no connection)" in gone.detail
