"""Reports stored in a real PACS (Orthanc with DICOMweb on localhost) with STOW-RS and found again with QIDO-RS and
WADO-RS; a rerun replaces, a wrong password is refused, a failed series is counted, a PACS that restarts mid-store
is waited for; and the same reports written to a folder."""

import copy
import dataclasses
import threading

import numpy as np
import pydicom
import pytest

from pipeline.dicomweb.client import AccessRefusedError
from pipeline.dicomweb.reports import report_datasets, screening_report
from pipeline.dicomweb.store import file_name, store_to_pacs, write_folder
from tests.dicomweb.conftest import client_of

HEAT_MAP = np.zeros((160, 160, 3), np.uint8)


def case_for_run(glioma_case, run_id: str):
    """The glioma case as a run of its own, on a date of its own: its reports' UIDs are its own."""
    finding, header = glioma_case
    return dataclasses.replace(finding, run_id=run_id, run_date=run_id), header


def test_a_stored_report_comes_back_from_qido_and_wado_as_an_sr_of_the_study(orthanc, glioma_case, screening_model):
    finding, header = case_for_run(glioma_case, "store-qido")
    report, capture = report_datasets(finding, screening_model, header, HEAT_MAP)
    client = client_of(orthanc)
    summary = store_to_pacs(client, {"series-1": [report, capture]})
    assert (summary.series_stored, summary.instances_stored, summary.series_failed) == (1, 2, 0)
    found = client.search_for_series(header.StudyInstanceUID, search_filters={"Modality": "SR"})
    assert report.SeriesInstanceUID in [pydicom.Dataset.from_json(row).SeriesInstanceUID for row in found]
    stored = client.retrieve_instance(header.StudyInstanceUID, report.SeriesInstanceUID, report.SOPInstanceUID)
    assert (stored.PatientID, stored.SeriesDescription) == (header.PatientID, report.SeriesDescription)
    images = client.search_for_series(header.StudyInstanceUID, search_filters={"Modality": "OT"})
    assert capture.SeriesInstanceUID in [pydicom.Dataset.from_json(row).SeriesInstanceUID for row in images]


def test_storing_a_run_again_replaces_its_report(orthanc, glioma_case, screening_model):
    finding, header = case_for_run(glioma_case, "store-twice")
    client = client_of(orthanc)
    for _ in range(2):
        report = screening_report(finding, screening_model, header)
        assert store_to_pacs(client, {"series-1": [report]}).series_stored == 1
    instances = client.search_for_instances(header.StudyInstanceUID, report.SeriesInstanceUID)
    assert len(instances) == 1


def test_a_wrong_password_is_refused_with_a_clear_error(orthanc, glioma_case, screening_model):
    finding, header = case_for_run(glioma_case, "store-refused")
    report = screening_report(finding, screening_model, header)
    with pytest.raises(AccessRefusedError, match=r"refused the credentials \(HTTP 401 Unauthorized\): check the "
                                                 r"user name and password, or the token, in the test's credentials"):
        store_to_pacs(client_of(orthanc, password="not-the-password"), {"series-1": [report], "series-2": [report]})


def test_a_series_the_pacs_refuses_is_counted_and_the_others_are_stored(orthanc, glioma_case, screening_model):
    finding, header = case_for_run(glioma_case, "store-one-bad")
    good = screening_report(finding, screening_model, header)
    bad = copy.deepcopy(screening_report(dataclasses.replace(finding, run_date="store-bad"), screening_model, header))
    del bad.SOPClassUID
    summary = store_to_pacs(client_of(orthanc), {"good": [good], "bad": [bad]}, workers=2)
    outcomes = summary.by_key()
    assert (outcomes["good"].stored, outcomes["good"].failed) == (1, 0)
    assert (outcomes["bad"].stored, outcomes["bad"].failed, outcomes["bad"].error) == (0, 1, "HTTP 400 Bad Request")


def test_a_pacs_that_restarts_mid_store_is_retried_and_one_that_stays_down_is_counted(
        fresh_orthanc, glioma_case, screening_model):
    finding, header = case_for_run(glioma_case, "store-restart")
    report = screening_report(finding, screening_model, header)
    client = client_of(fresh_orthanc, retries=4, backoff_seconds=0.2)
    fresh_orthanc.kill()
    threading.Timer(0.3, fresh_orthanc.start).start()
    assert store_to_pacs(client, {"series-1": [report]}).series_stored == 1
    fresh_orthanc.kill()
    down = store_to_pacs(client_of(fresh_orthanc, retries=1, backoff_seconds=0.01), {"series-1": [report]})
    assert (down.series_failed, down.series[0].error.split(":")[0]) == (1, "ConnectionError")


def test_folder_output_writes_each_report_as_a_file_a_rerun_replaces_them_a_broken_one_is_counted(
        tmp_path, glioma_case, screening_model):
    finding, header = case_for_run(glioma_case, "store-folder")
    datasets = report_datasets(finding, screening_model, header, HEAT_MAP)
    for _ in range(2):
        summary = write_folder({"series-1": datasets, "broken": [pydicom.Dataset()]}, str(tmp_path))
        assert (summary.series_stored, summary.instances_stored, summary.series_failed) == (1, 2, 1)
    assert summary.by_key()["broken"].error.startswith("AttributeError while encoding")
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == sorted(file_name(dataset) for dataset in datasets)
    assert names[0].startswith("OT-") and names[1] == f"SR-{datasets[0].SOPInstanceUID}.dcm"
    written = pydicom.dcmread(tmp_path / names[1])
    assert (written.SOPInstanceUID, written.PatientID) == (datasets[0].SOPInstanceUID, header.PatientID)
