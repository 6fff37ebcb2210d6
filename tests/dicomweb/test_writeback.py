"""A screening night writes its findings back, as users run it: ``jobs.screen --findings-to`` a real PACS (Orthanc on
localhost) over the sample archive's real DICOM series. The reports come back from QIDO-RS as SRs of the deciding
images' patients and studies; a second run of the same date replaces them (same UIDs), even when the PACS was
killed after its commit (the tables stay committed, the failure is counted, exit status 4) and ``jobs.findings``
sends them again; a folder receives .dcm files, with heat-map captures; and a destination that cannot work stops
the job before any scoring."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import time

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes

import jobs.screen
from pipeline.results import tables
from tests.conftest import ROOT, SAMPLES, TEST_KEY, job_summary, skip_without_orthanc
from tests.dicomweb.conftest import client_of
from tests.support.nights import sample_archive_copy
from tools.local_pacs import orthanc_server
from tests.support.pacs_archive import SAMPLE_DICOM, SAMPLE_STUDY_DATES, store_files

RUN_DATE = "2026-12-02"
FLAGGED_SERIES = 3  # of the sample archive's four series (README: one tumor-free series is a false alarm)
FLAGGED_LOOSE_IMAGES = 8  # JPEG and PNG slices: no patient or study to file a report under


def job(name: str, *args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"jobs.{name}", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def pacs_env(server, password: str | None = None) -> dict:
    """The environment a night runs in: the pseudonym key, and the PACS credentials in DICOMWEB_* variables."""
    return {**os.environ, "PSEUDONYM_KEY": TEST_KEY, "DICOMWEB_USERNAME": server.user,
            "DICOMWEB_PASSWORD": password or server.password}


def destination(server) -> str:
    return "dicomweb+" + server.dicomweb_url


def stored_reports(server) -> dict[str, pydicom.Dataset]:
    """Every SR the PACS holds, found by QIDO-RS (Modality SR) and retrieved by WADO-RS, by SOP Instance UID."""
    client = client_of(server)
    found = [pydicom.Dataset.from_json(row) for row in client.search_for_instances(search_filters={"Modality": "SR"})]
    return {row.SOPInstanceUID: client.retrieve_instance(row.StudyInstanceUID, row.SeriesInstanceUID,
                                                         row.SOPInstanceUID) for row in found}


def source_image(report: pydicom.Dataset) -> str:
    """The SOP Instance UID of the image a report's measurement group was found on."""
    group, = hd.sr.ComprehensiveSR.from_dataset(report).content.get_image_measurement_groups()
    return group.source_images[0].referenced_sop_instance_uid


def screening_run(report: pydicom.Dataset) -> str:
    parameters = hd.sr.utils.find_content_items(report, name=codes.DCM.AlgorithmParameters, recursive=True)
    return parameters[1].TextValue.removeprefix("screening run ")


def deciding_headers(output: pathlib.Path, flagged_only: bool = True) -> dict[str, pydicom.Dataset]:
    """The deciding image's header of each series of the night (the same in each of its runs: the rerun carried
    its rows over), by its SOP Instance UID."""
    rows = [row for row in tables.read_table(str(output), tables.SERIES).to_pylist()
            if row["run_date"] == RUN_DATE and (row["flagged"] or not flagged_only)]
    headers = [pydicom.dcmread(row["ordered_source_uris"][row["most_suspicious_slice_index"]],
                               stop_before_pixels=True) for row in rows]
    return {header.SOPInstanceUID: header for header in headers}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, orthanc_reaper):
    """A PACS of this module's own: the rerun below kills and restarts it."""
    skip_without_orthanc()
    with orthanc_server(tmp_path_factory.mktemp("pacs")) as server:
        yield server


@dataclasses.dataclass(frozen=True)
class Nights:
    output: pathlib.Path
    first: dict  # night A's summary line
    first_reports: dict  # the PACS's SRs after night A
    rerun: dict  # night B's (the same date, the PACS killed after its commit)
    rerun_status: int
    rerun_log: str
    resent: subprocess.CompletedProcess  # jobs.findings for night B, the PACS back
    reports: dict  # the PACS's SRs after the resend


class Collected(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def nights(pacs, tmp_path_factory) -> Nights:
    """Night A screens the sample archive with --findings-to the PACS (the job as a subprocess). Night B runs the
    same date again in this process, the PACS killed once its tables are committed; then the PACS restarts and
    jobs.findings sends night B's findings."""
    with sample_archive_copy(tmp_path_factory.mktemp("writeback")) as (archive, output):
        common = ["--input", str(archive), "--output", str(output), "--run-date", RUN_DATE,
                  "--findings-to", destination(pacs)]
        done = job("screen", *common, env=pacs_env(pacs))
        assert done.returncode == 0, done.stderr[-3000:]
        first, first_reports = job_summary(done.stdout), stored_reports(pacs)
        with pytest.MonkeyPatch.context() as patch:
            for name in ("PSEUDONYM_KEY", "DICOMWEB_USERNAME", "DICOMWEB_PASSWORD"):
                patch.setenv(name, pacs_env(pacs)[name])
            rerun, status, log = screen_here([*common, "--no-report"], patch, after_commit=pacs.kill)
        pacs.start()
        resent = job("findings", "--results", str(output), "--run-id", rerun["run_id"], "--findings-to",
                     destination(pacs), env=pacs_env(pacs))
        return Nights(output, first, first_reports, rerun, status, log, resent, stored_reports(pacs))


def screen_here(argv: list[str], patch: pytest.MonkeyPatch, after_commit) -> tuple[dict, int, str]:
    """jobs.screen in this process, ``after_commit`` called once its tables are committed: its summary, its exit
    status and what the write-back logged."""
    commit = jobs.screen.score_and_commit

    def commit_then(plan):
        record = commit(plan)
        after_commit()
        return record

    patch.setattr(jobs.screen, "score_and_commit", commit_then)
    collected, printed = Collected(), io.StringIO()
    logging.getLogger("pipeline.dicomweb").addHandler(collected)
    try:
        with contextlib.redirect_stdout(printed):
            status = jobs.screen.main(argv)
    finally:
        logging.getLogger("pipeline.dicomweb").removeHandler(collected)
    return job_summary(printed.getvalue()), status, "\n".join(collected.lines)


@pytest.mark.slow
def test_each_flagged_series_finding_comes_back_from_qido_as_an_sr_of_its_deciding_image(nights):
    assert nights.first["findings"] == {"to": destination_of(nights), "for": "flagged", "stored": FLAGGED_SERIES,
                                        "failed": 0, "skipped": FLAGGED_LOOSE_IMAGES,
                                        "instances_stored": FLAGGED_SERIES}
    assert nights.first["report"] and nights.first["series_flagged"] == FLAGGED_SERIES
    headers = deciding_headers(nights.output)
    reports = {source_image(report): report for report in nights.first_reports.values()}
    assert set(reports) == set(headers) and len(headers) == FLAGGED_SERIES
    for uid, header in headers.items():
        report = reports[uid]
        assert (report.PatientID, report.PatientName, report.StudyInstanceUID) == (
            header.PatientID, header.PatientName, header.StudyInstanceUID)
        assert report.SeriesDescription == "AI-generated screening result, not a diagnosis"
        assert screening_run(report) == nights.first["run_id"]


def destination_of(nights: Nights) -> str:
    return nights.first["findings"]["to"]


@pytest.mark.slow
def test_a_pacs_killed_after_the_commit_leaves_the_run_committed_and_its_findings_counted_as_failed(nights):
    assert nights.rerun_status == 4
    assert nights.rerun["files_carried_over"] == nights.rerun["files_listed"]  # nothing scored again
    assert nights.rerun["findings"] == {"to": destination_of(nights), "for": "flagged", "stored": 0,
                                        "failed": FLAGGED_SERIES, "skipped": FLAGGED_LOOSE_IMAGES,
                                        "instances_stored": 0}
    runs = tables.read_table(str(nights.output), tables.RUNS).to_pylist()
    assert nights.rerun["run_id"] in [run["run_id"] for run in runs]  # committed
    assert "resend its findings with `python -m jobs.findings" in nights.rerun_log
    assert "ConnectionError" in nights.rerun_log


@pytest.mark.slow
def test_the_resent_findings_of_a_rerun_of_the_date_replace_the_first_nights_in_the_pacs(nights):
    assert nights.resent.returncode == 0, nights.resent.stderr[-3000:]
    summary = job_summary(nights.resent.stdout)
    assert summary["run_id"] == nights.rerun["run_id"]
    assert (summary["findings"]["stored"], summary["findings"]["failed"]) == (FLAGGED_SERIES, 0)
    assert set(nights.reports) == set(nights.first_reports)  # the same instances: replaced, none added
    assert {screening_run(report) for report in nights.reports.values()} == {nights.rerun["run_id"]}


@pytest.mark.slow
def test_findings_sent_to_a_folder_are_dcm_files_that_a_resend_replaces(nights, tmp_path):
    folder = tmp_path / "findings"
    env = {**os.environ, "PSEUDONYM_KEY": TEST_KEY}
    with_heat_maps = job("findings", "--results", str(nights.output), "--findings-to", str(folder),
                         "--findings-for", "all", "--findings-heat-map", env=env)
    assert with_heat_maps.returncode == 0, with_heat_maps.stderr[-3000:]
    first_files = sorted(path.name for path in folder.iterdir())
    again = job("findings", "--results", str(nights.output), "--findings-to", str(folder), "--findings-for", "all",
                env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(path.name for path in folder.iterdir()) == first_files
    assert job_summary(again.stdout)["findings"] == {"to": str(folder), "for": "all", "stored": 4, "failed": 0,
                                                     "skipped": 10, "instances_stored": 4}
    written = [pydicom.dcmread(folder / name) for name in first_files]
    reports = {source_image(dataset): dataset for dataset in written if dataset.Modality == "SR"}
    captures = [dataset for dataset in written if dataset.Modality == "OT"]
    headers = deciding_headers(nights.output, flagged_only=False)
    assert set(reports) == set(headers) and len(captures) == len(headers)
    assert {(capture.PatientID, capture.StudyInstanceUID) for capture in captures} == {
        (header.PatientID, header.StudyInstanceUID) for header in headers.values()}


@pytest.fixture(scope="module")
def pacs_night(tmp_path_factory, orthanc_reaper):
    """The sample archive's DICOM files in a PACS, screened from it with --findings-to the same PACS (heat-map
    captures too: the deciding slices retrieved again), then resent: (the night's summary, the resend's, the PACS's
    SRs after each, the output)."""
    skip_without_orthanc()
    with orthanc_server(tmp_path_factory.mktemp("source-pacs")) as server:
        store_files(server, sorted(SAMPLE_DICOM.rglob("*.dcm")))
        output = tmp_path_factory.mktemp("pacs-night") / "results"
        done = job("screen", "--input", destination(server), "--study-date-from", SAMPLE_STUDY_DATES[0],
                   "--study-date-to", SAMPLE_STUDY_DATES[1], "--output", str(output), "--run-date", RUN_DATE,
                   "--findings-to", destination(server), "--findings-heat-map", env=pacs_env(server))
        assert done.returncode == 0, done.stderr[-3000:]
        night, reports = job_summary(done.stdout), stored_reports(server)
        resent = job("findings", "--results", str(output), "--findings-to", destination(server),
                     env=pacs_env(server))
        assert resent.returncode == 0, resent.stderr[-3000:]
        return night, job_summary(resent.stdout), reports, stored_reports(server), output


@pytest.mark.slow
def test_a_night_read_from_a_pacs_writes_its_findings_back_beside_the_images_and_a_resend_replaces_them(pacs_night):
    night, resent, reports, after_resend, output = pacs_night
    assert (night["findings"]["stored"], night["findings"]["failed"]) == (FLAGGED_SERIES, 0)
    assert night["findings"]["instances_stored"] == 2 * FLAGGED_SERIES  # each report with its heat-map capture
    assert resent["findings"]["stored"] == FLAGGED_SERIES and set(after_resend) == set(reports)
    files = {header.SOPInstanceUID: header for header in (pydicom.dcmread(path, stop_before_pixels=True)
                                                          for path in SAMPLE_DICOM.rglob("*.dcm"))}
    series = [row for row in tables.read_table(str(output), tables.SERIES).to_pylist() if row["flagged"]]
    deciding = {row["ordered_source_uris"][row["most_suspicious_slice_index"]].rsplit("/", 1)[1] for row in series}
    assert {source_image(report) for report in reports.values()} == deciding
    for report in reports.values():
        header = files[source_image(report)]
        assert (report.PatientID, report.StudyInstanceUID) == (header.PatientID, header.StudyInstanceUID)


# --- refused before any scoring ----------------------------------------------------------------------------------


def refused(*options: str, env: dict, tmp_path: pathlib.Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = job("screen", "--input", str(SAMPLES / "archive"), "--output", str(tmp_path / "results"), *options,
               env=env, timeout=120)
    return done, time.monotonic() - started


def test_a_wrong_pacs_password_stops_the_night_within_seconds_before_any_scoring(orthanc, tmp_path):
    done, seconds = refused("--findings-to", destination(orthanc), env=pacs_env(orthanc, "not-the-password"),
                            tmp_path=tmp_path)
    assert done.returncode == 2 and seconds < 30, done.stderr[-3000:]
    assert "refused the credentials (HTTP 401 Unauthorized)" in done.stderr
    assert "DICOMWEB_USERNAME, DICOMWEB_PASSWORD" in done.stderr and "not-the-password" not in done.stderr
    assert "Ray resources" not in done.stderr and not (tmp_path / "results").exists()


def test_a_pacs_that_does_not_answer_or_a_folder_inside_the_input_stops_the_night_before_any_scoring(tmp_path):
    with socket.socket() as closed:  # a port that was free a moment ago: nothing listens there
        closed.bind(("127.0.0.1", 0))
        silent = f"dicomweb+http://127.0.0.1:{closed.getsockname()[1]}/dicom-web"
    env = {**os.environ, "PSEUDONYM_KEY": TEST_KEY}
    done, seconds = refused("--findings-to", silent, env=env, tmp_path=tmp_path)
    assert done.returncode == 2 and seconds < 30 and "cannot reach the findings destination" in done.stderr
    done, _ = refused("--findings-to", str(SAMPLES / "archive" / "findings"), env=env, tmp_path=tmp_path)
    assert done.returncode == 2 and "is inside the input" in done.stderr
    done, _ = refused("--findings-heat-map", env=env, tmp_path=tmp_path)
    assert done.returncode == 2 and "--findings-to says where" in done.stderr
    assert not (tmp_path / "results").exists() and not (SAMPLES / "archive" / "findings").exists()
