"""PACS faults, met by the screening job as a nightly run meets them, against a real Orthanc on localhost. The faults
come through the fault-injecting proxy (``tests.support.http_faults``) in front of it, which answers for the PACS only
where a fault says so, or acts on the real server (kills it, deletes an instance) when a request arrives.

As for S3 (``test_s3_faults.py``), the PACS is an input: an instance that cannot be retrieved becomes an
``unreadable_file`` row and the rest are scored (exit 0), and the next night tries it again; answers that are slow,
throttled (429) or failing for a while (5xx) are waited for and retried, and cost nothing; a PACS that refuses the
credentials, or does not answer, stops the run within seconds before Ray starts (exit 2), with nothing written."""

import os
import subprocess
import sys
import time

import pytest

from infra.ports import free_port
from pipeline import schema as col
from pipeline.results import tables, views
from tests.conftest import ROOT, TEST_KEY, job_summary
from tests.support.http_faults import Fault, FaultyProxy, Trigger
from tests.support.pacs_archive import (SAMPLE_DICOM, SAMPLE_STUDY_DATES, credentials_file, delete_instance,
                                        pacs_input, sop_instance_uid, store_files)

pytestmark = pytest.mark.slow

WADO = r"/instances/[0-9.]+$"  # an instance's retrieval
FILES = sorted(SAMPLE_DICOM.rglob("*.dcm"))  # 14 files, 17 rows (the multi-frame file has 4 frames)


def screen(url: str, output, run_date: str, credentials: str, *options: str, secret: str = ""
           ) -> tuple[subprocess.CompletedProcess, dict | None]:
    command = [sys.executable, "-m", "jobs.screen", "--input", pacs_input(url), "--output", str(output),
               "--run-date", run_date, "--study-date-from", SAMPLE_STUDY_DATES[0], "--study-date-to",
               SAMPLE_STUDY_DATES[1], "--dicomweb-credentials-file", credentials, "--no-report", *options]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PSEUDONYM_KEY": TEST_KEY}, capture_output=True,
                          text=True, timeout=900)
    assert not secret or secret not in done.stdout + done.stderr
    return done, job_summary(done.stdout) if done.returncode == 0 else None


def rows_of(output) -> dict[str, list[dict]]:
    rows = {}
    for row in tables.read_table(str(output), tables.PREDICTIONS).to_pylist():
        rows.setdefault(row[col.SOURCE_URI].rsplit("/", 1)[-1], []).append(row)
    return rows


@pytest.fixture
def pacs(fresh_orthanc):
    """A fresh Orthanc holding the sample archive's DICOM files, and a proxy in front of it."""
    store_files(fresh_orthanc, FILES)
    proxy = FaultyProxy(fresh_orthanc.url)
    yield fresh_orthanc, proxy
    proxy.close()


def test_a_pacs_that_stops_mid_run_costs_error_rows_and_the_next_night_scores_them(pacs, tmp_path):
    server, proxy = pacs
    proxy.on(Trigger(WADO, server.kill, after=5))  # killed as the sixth retrieval arrives
    credentials = credentials_file(tmp_path, server)
    done, first = screen(proxy.endpoint, tmp_path / "results", "2026-11-05", credentials, secret=server.password)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = rows_of(tmp_path / "results")
    assert len(rows) == len(FILES)  # every instance listed has its rows
    failed = {uid: row[0] for uid, row in rows.items() if row[0][col.STATUS] == col.STATUS_ERROR}
    assert failed and len(failed) <= len(FILES) - 5 and first["errors_by_code"] == {"unreadable_file": len(failed)}
    for row in failed.values():
        assert row[col.ERROR_CODE] == "unreadable_file" and "did not answer" in row[col.ERROR_MESSAGE]
    server.start()
    done, second = screen(proxy.endpoint, tmp_path / "results", "2026-11-06", credentials)
    assert done.returncode == 0, done.stderr[-3000:]
    assert second["files_unchanged"] == len(FILES) - len(failed) and second["rows_error"] == 0
    assert {sop for sop in (path.rsplit("/", 1)[-1] for path in proxy.requested(WADO))} >= set(failed)
    with views.connect(str(tmp_path / "results")) as connection:
        current = connection.sql("SELECT status, count(*) FROM current_predictions GROUP BY 1").fetchall()
    assert current == [("ok", 17)]


def test_slow_throttled_and_failing_answers_are_waited_for_and_retried(pacs, tmp_path):
    server, proxy = pacs
    broken = sop_instance_uid(FILES[0])
    faults = [Fault(f"/instances/{broken}$", 500, method="GET", times=None),  # one instance keeps failing
              Fault(WADO, 503, method="GET"),  # every other instance's first retrieval fails
              Fault(r"/series\?", 429, method="GET", headers=(("Retry-After", "1"),)),  # a series search throttled
              Fault(WADO, None, method="GET", times=2, delay=1.5)]  # then answers come slowly
    proxy.inject(*faults)
    done, summary = screen(proxy.endpoint, tmp_path / "results", "2026-11-05", credentials_file(tmp_path, server))
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(fault.injected for fault in faults), [fault.injected for fault in faults]
    rows = rows_of(tmp_path / "results")
    assert len(rows) == len(FILES) and summary["rows_scored"] == 17 - 1
    assert rows[broken][0][col.ERROR_CODE] == "unreadable_file"
    assert "answered HTTP 500" in rows[broken][0][col.ERROR_MESSAGE]


def test_an_instance_deleted_between_search_and_retrieval_becomes_an_error_row(pacs, tmp_path):
    server, proxy = pacs
    victim = sop_instance_uid(FILES[-1])
    proxy.on(Trigger(WADO, lambda: delete_instance(server, victim)))  # as the first retrieval arrives
    done, summary = screen(proxy.endpoint, tmp_path / "results", "2026-11-05", credentials_file(tmp_path, server))
    assert done.returncode == 0, done.stderr[-3000:]
    row = rows_of(tmp_path / "results")[victim][0]
    assert (row[col.STATUS], row[col.ERROR_CODE]) == ("error", "unreadable_file")
    assert "is not on the DICOMweb server" in row[col.ERROR_MESSAGE] and "deleted since the search" in \
        row[col.ERROR_MESSAGE]
    assert summary["files_listed"] == len(FILES) and summary["errors_by_code"] == {"unreadable_file": 1}


@pytest.mark.parametrize("fault", ["wrong password", "no server"])
def test_a_pacs_that_refuses_the_credentials_or_does_not_answer_stops_the_run_at_once(orthanc, tmp_path, fault):
    wrong = "not-the-password-9f3k2"
    url = orthanc.url if fault == "wrong password" else f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    done, _ = screen(url, tmp_path / "results", "2026-11-05", credentials_file(tmp_path, orthanc, wrong),
                     secret=wrong)
    assert done.returncode == 2 and time.monotonic() - started < 30, done.stderr[-3000:]
    said = {"wrong password": "refused the credentials (HTTP 401 Unauthorized)",
            "no server": "did not answer (no connection)"}[fault]
    assert said in done.stderr and "Ray resources" not in done.stderr
    assert not (tmp_path / "results").exists()
