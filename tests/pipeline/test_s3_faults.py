"""S3 faults through a fault-injecting proxy in front of the S3 endpoint on localhost: transient errors and
throttling on reads and writes are retried and cost nothing; an object that keeps failing becomes an error row;
an output bucket lost while a run writes, or between two of its table commits, fails the run; nothing of it counts
until complete, and the next run finishes an interrupted commit: nothing lost, nothing doubled."""

import os
import re
import subprocess
import sys

import boto3
import pytest

from infra import storage
from pipeline.results import tables
from tests.conftest import ROOT, SAMPLES, TEST_KEY, job_summary
from tests.support.http_faults import Fault, FaultyProxy

pytestmark = pytest.mark.slow

ARCHIVE, OUTPUT = "fault-archive", "fault-results"
SECRET = "wJalrXUtnFEMI-fault-test-secret-K7MDENG"  # a distinctive secret: it must never be printed
INPUT = rf"^/{ARCHIVE}/mri/"


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for bucket in (ARCHIVE, OUTPUT):
        client.create_bucket(Bucket=bucket)
    for path in sorted((SAMPLES / "archive" / "loose").glob("*"))[:6]:
        client.upload_file(str(path), ARCHIVE, f"mri/loose/{path.name}")
    for path in sorted((SAMPLES / "archive" / "dicom" / "axial-glioma").glob("*.dcm")):
        client.upload_file(str(path), ARCHIVE, f"mri/axial/{path.name}")
    keys = [obj["Key"] for obj in client.list_objects_v2(Bucket=ARCHIVE)["Contents"]]
    return client, keys


@pytest.fixture(scope="module")
def proxy(s3_endpoint):
    proxy = FaultyProxy(s3_endpoint)
    yield proxy
    proxy.close()


def screen(proxy: FaultyProxy, output: str, run_date: str, *options: str
           ) -> tuple[subprocess.CompletedProcess, dict | None]:
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint, "AWS_SECRET_ACCESS_KEY": SECRET,
           "PSEUDONYM_KEY": TEST_KEY, "MRI_SCREEN_S3_MAX_ATTEMPTS": "6"}
    command = [sys.executable, "-m", "jobs.screen", "--input", f"s3://{ARCHIVE}/mri", "--output", output,
               "--run-date", run_date, *options]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert SECRET not in done.stdout + done.stderr
    summary = job_summary(done.stdout) if done.returncode == 0 else None
    return done, summary


def read(output: str, table: str = tables.PREDICTIONS) -> list[dict]:
    return tables.read_table(output, table).to_pylist()  # straight to the S3 endpoint, not through the proxy


def test_transient_errors_and_throttling_are_retried_on_reads_and_writes(s3, proxy):
    _, keys = s3
    faults = [Fault(INPUT, 503, "SlowDown", method="GET"), Fault(INPUT, 500, "InternalError", method="GET"),
              Fault(rf"^/{OUTPUT}/transient/", 503, "ServiceUnavailable", method="PUT"),
              Fault(rf"^/{OUTPUT}/transient/", 500, "InternalError", method="PUT")]
    proxy.inject(*faults)
    done, summary = screen(proxy, f"s3://{OUTPUT}/transient", "2026-11-05")
    proxy.clear()
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(fault.injected > 0 for fault in faults), [(fault.code, fault.injected) for fault in faults]
    rows = read(f"s3://{OUTPUT}/transient")
    assert sorted(row["source_uri"] for row in rows) == sorted(f"s3://{ARCHIVE}/{key}" for key in keys)
    assert {row["status"] for row in rows} == {"ok"} and summary["rows_scored"] == len(keys)


def test_an_object_that_keeps_failing_becomes_an_error_row_and_the_rest_are_scored(s3, proxy):
    _, keys = s3
    broken, forbidden = f"/{ARCHIVE}/{keys[0]}", f"/{ARCHIVE}/{keys[-1]}"
    proxy.inject(Fault(f"^{broken}$", 500, "InternalError", times=None),
                 Fault(f"^{forbidden}$", 403, "AccessDenied", times=None))
    done, summary = screen(proxy, f"s3://{OUTPUT}/permanent", "2026-11-05")
    proxy.clear()
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["source_uri"]: row for row in read(f"s3://{OUTPUT}/permanent")}
    assert len(rows) == len(keys)
    for key in (broken, forbidden):
        row = rows[f"s3:/{key}"]
        assert (row["status"], row["error_code"]) == ("error", "unreadable_file") and row["error_message"]
    assert summary["errors_by_code"] == {"unreadable_file": 2} and summary["rows_scored"] == len(keys) - 2


def bucket_lost(folder: str, moment: str) -> Fault:
    """The output bucket disappears (every request answered NoSuchBucket) from the given moment of a run."""
    if moment == "while-writing":  # at the first write of the run's predictions to its work folder
        return Fault(rf"^/{OUTPUT}/{folder}/_work/[^/]+/predictions/", 404, "NoSuchBucket", method="PUT",
                     times=None, scope=rf"^/{OUTPUT}")
    # at the series table's commit: the run's predictions are committed, its series and runs row are not
    return Fault(rf"^/{OUTPUT}/{folder}/series/_delta_log/", 404, "NoSuchBucket", method="PUT", times=None,
                 scope=rf"^/{OUTPUT}")


@pytest.mark.parametrize("moment", ["while-writing", "mid-commit"])
def test_losing_the_output_bucket_fails_the_run_and_nothing_is_lost_or_doubled(s3, proxy, moment):
    output, lost_after = f"s3://{OUTPUT}/lost-{moment}", bucket_lost(f"lost-{moment}", moment)
    first, _ = screen(proxy, output, "2026-11-06")
    assert first.returncode == 0, first.stderr[-3000:]
    before = read(output)
    proxy.inject(lost_after)
    failed, _ = screen(proxy, output, "2026-11-06", "--full")
    proxy.clear()
    assert lost_after.injected > 0, "the bucket was never lost"
    assert failed.returncode == 3, failed.stderr[-3000:]
    assert len(read(output, tables.RUNS)) == 1
    if moment == "while-writing":
        assert "was not committed" in failed.stderr and read(output) == before
    else:  # its predictions are committed, not counted until the next run finishes its commit from the work folder:
        # readers see the earlier complete night meanwhile
        assert "failed while committing" in failed.stderr and "jobs.maintain recover" in failed.stderr
        failed_id = re.search(r"run (\S+) failed while committing", failed.stderr).group(1)
        raw = tables.dataset(output, tables.PREDICTIONS).to_table()
        assert set(raw["run_id"].to_pylist()) == {failed_id} and read(output) == before
    again, summary = screen(proxy, output, "2026-11-06", "--full")
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary["recovered_runs"] == ([] if moment == "while-writing" else [failed_id])
    rows = read(output)
    assert {row["run_id"] for row in rows} == {summary["run_id"]} and len(rows) == len(before)
    assert len(read(output, tables.RUNS)) == (2 if moment == "while-writing" else 3)
    commits = [entry["run_id"] for entry in tables.history(output)]
    assert all(commits.count(run_id) == 3 for run_id in set(commits) - {None})  # each table once per run
    assert not storage.list_files(storage.join(output, tables.WORK))
