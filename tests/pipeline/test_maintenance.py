"""Maintenance on real tables: compaction and vacuum keep every row, and an output of the earlier Parquet layout
is converted once, each date to the rows of its latest committed run, the old files kept aside."""

import datetime
import pathlib
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import maintenance, results
from tests.conftest import ROOT
from tests.pipeline.test_results import read, run_ids, stage

DATE = "2026-11-03"


def legacy_output(root) -> str:
    """Two committed runs of one date and a third that never committed, as the Parquet layout wrote them."""
    for run_id, minute, uris, committed in (("run-a", 1, ["x.dcm"], True), ("run-b", 2, ["x.dcm", "y.dcm"], True),
                                            ("run-c", 3, ["z.dcm"], False)):
        for table, key in ((results.PREDICTIONS, "source_uri"), (results.SERIES, "series_key")):
            folder = root / table / f"run_date={DATE}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"run_id": [run_id] * len(uris), key: uris}), folder / f"{run_id}-part-0.parquet")
        if committed:
            folder = root / results.RUNS / f"run_date={DATE}"
            folder.mkdir(parents=True, exist_ok=True)
            finished = datetime.datetime(2026, 11, 3, 2, minute, tzinfo=datetime.timezone.utc)
            pq.write_table(pa.table({"run_id": [run_id], "finished_at": [finished]}), folder / f"{run_id}.parquet")
    return str(root)


def test_an_old_output_is_migrated_once_with_each_date_read_as_its_latest_committed_run(tmp_path):
    output = legacy_output(tmp_path / "old")
    done = subprocess.run([sys.executable, "-m", "jobs.maintain", "migrate", "--results", output], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert read(output) == [("run-b", "x.dcm"), ("run-b", "y.dcm")]
    assert read(output, results.SERIES) == [("run-b", "x.dcm"), ("run-b", "y.dcm")]
    assert run_ids(output) == ["run-a", "run-b"]
    assert (tmp_path / "old" / maintenance.LEGACY / "runs" / f"run_date={DATE}" / "run-a.parquet").is_file()
    again = subprocess.run([sys.executable, "-m", "jobs.maintain", "migrate", "--results", output], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already holds Delta tables" in again.stderr


def test_compaction_and_vacuum_keep_every_row(tmp_path):
    output = str(tmp_path / "results")
    for index, run_date in enumerate(["2026-11-01", "2026-11-01", "2026-11-02", "2026-11-03"]):
        stage(output, f"run-{index}", [f"{index}-a.dcm", f"{index}-b.dcm"], run_date=run_date, minute=index)
        results.commit_run(output, f"run-{index}")
    before = read(output), read(output, results.SERIES), run_ids(output)
    report = maintenance.compact(output)
    assert report[results.RUNS]["files_removed"] == 4 and report[results.RUNS]["files_added"] == 1
    removed = maintenance.vacuum(output, retain_days=0)
    assert removed[results.PREDICTIONS] == 1  # the first run's rows, replaced by the re-run of its date
    assert (read(output), read(output, results.SERIES), run_ids(output)) == before


def test_an_old_output_on_s3_is_migrated_with_its_files_kept_aside(tmp_path, s3_endpoint):
    """The same conversion through the S3 endpoint on localhost: the old files are copied aside, folder structure
    and all, and the converted tables read as the latest committed run of each date."""
    import boto3

    local = pathlib.Path(legacy_output(tmp_path / "old"))
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="legacy")
    for path in local.rglob("*.parquet"):
        client.upload_file(str(path), "legacy", f"results/{path.relative_to(local)}")
    output = "s3://legacy/results"
    with pytest.raises(results.ResultsError, match="jobs.maintain migrate"):
        results.check_layout(output)
    maintenance.migrate(output)
    assert read(output) == [("run-b", "x.dcm"), ("run-b", "y.dcm")] and run_ids(output) == ["run-a", "run-b"]
    keys = {item["Key"] for item in client.list_objects_v2(Bucket="legacy", Prefix="results/")["Contents"]}
    assert f"results/{maintenance.LEGACY}/runs/run_date={DATE}/run-a.parquet" in keys
    assert not [key for key in keys if key.startswith(f"results/runs/run_date={DATE}/")]
