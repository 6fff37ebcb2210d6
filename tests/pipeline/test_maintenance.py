"""Maintenance on real tables: compaction and vacuum keep every row, an output of the earlier Parquet layout is
converted once, each date to the rows of its latest committed run, the old files kept aside, and damage to a table
(a truncated log entry, a data file gone, a commit left half done) is named by ``verify`` and undone by
``restore``."""

import datetime
import json
import pathlib
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.results import maintenance, tables
from tests.conftest import ROOT, SAMPLES
from tests.pipeline.test_results import read, run_ids, stage

DATE = "2026-11-03"


def legacy_output(root) -> str:
    """Two committed runs of one date and a third that never committed, as the Parquet layout wrote them."""
    for run_id, minute, uris, committed in (("run-a", 1, ["x.dcm"], True), ("run-b", 2, ["x.dcm", "y.dcm"], True),
                                            ("run-c", 3, ["z.dcm"], False)):
        for table, key in ((tables.PREDICTIONS, "source_uri"), (tables.SERIES, "series_key")):
            folder = root / table / f"run_date={DATE}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"run_id": [run_id] * len(uris), key: uris}), folder / f"{run_id}-part-0.parquet")
        if committed:
            folder = root / tables.RUNS / f"run_date={DATE}"
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
    assert read(output, tables.SERIES) == [("run-b", "x.dcm"), ("run-b", "y.dcm")]
    assert run_ids(output) == ["run-a", "run-b"]
    assert (tmp_path / "old" / maintenance.LEGACY / "runs" / f"run_date={DATE}" / "run-a.parquet").is_file()
    again = subprocess.run([sys.executable, "-m", "jobs.maintain", "migrate", "--results", output], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already holds Delta tables" in again.stderr


def test_compaction_and_vacuum_keep_every_row(tmp_path):
    output = str(tmp_path / "results")
    for index, run_date in enumerate(["2026-11-01", "2026-11-01", "2026-11-02", "2026-11-03"]):
        stage(output, f"run-{index}", [f"{index}-a.dcm", f"{index}-b.dcm"], run_date=run_date, minute=index)
        tables.commit_run(output, f"run-{index}")
    before = read(output), read(output, tables.SERIES), run_ids(output)
    report = maintenance.compact(output)
    assert report[tables.RUNS]["files_removed"] == 4 and report[tables.RUNS]["files_added"] == 1
    removed = maintenance.vacuum(output, retain_days=0)
    assert removed[tables.PREDICTIONS] == 1  # the first run's rows, replaced by the re-run of its date
    assert (read(output), read(output, tables.SERIES), run_ids(output)) == before


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
    with pytest.raises(tables.ResultsError, match="jobs.maintain migrate"):
        tables.check_layout(output)
    maintenance.migrate(output)
    assert read(output) == [("run-b", "x.dcm"), ("run-b", "y.dcm")] and run_ids(output) == ["run-a", "run-b"]
    keys = {item["Key"] for item in client.list_objects_v2(Bucket="legacy", Prefix="results/")["Contents"]}
    assert f"results/{maintenance.LEGACY}/runs/run_date={DATE}/run-a.parquet" in keys
    assert not [key for key in keys if key.startswith(f"results/runs/run_date={DATE}/")]


def nights(output: str, count: int = 3) -> list[str]:
    """``count`` committed nights on as many dates, one image and one series each, the counts in their runs rows."""
    dates = [f"2026-11-0{day}" for day in range(1, count + 1)]
    for index, run_date in enumerate(dates):
        stage(output, f"run-{index}", [f"{index}.dcm"], run_date=run_date, minute=index)
        tables.stage_run_row(output, {"run_id": f"run-{index}", "run_date": run_date, "rows_written": 1,
                                       "series": 1, "finished_at": datetime.datetime(
                                           2026, 11, 3, 2, index, tzinfo=datetime.timezone.utc)})
        tables.commit_run(output, f"run-{index}")
    return dates


def job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_verify_names_a_truncated_log_and_a_missing_file_and_restore_brings_the_tables_back(tmp_path):
    output = str(tmp_path / "results")
    nights(output)
    assert job("jobs.maintain", "verify", "--results", output).returncode == 0
    last_entry = tmp_path / "results" / "predictions" / "_delta_log" / f"{2:020d}.json"
    last_entry.write_bytes(last_entry.read_bytes()[:len(last_entry.read_bytes()) // 2])  # a commit cut short
    lost = next((tmp_path / "results" / "series" / "run_date=2026-11-03").glob("*.parquet"))
    lost.unlink()  # a data file the log names, deleted

    verified = job("jobs.maintain", "verify", "--results", output)
    assert verified.returncode == 1, verified.stderr
    problems = json.loads(verified.stdout)["problems"]
    assert problems == [
        f"The predictions table's log entry for version 2 cannot be parsed ({problems[0].split('(', 1)[1]}",
        f"The series table's version 2 names 1 data file(s) that do not exist (first: "
        f"run_date=2026-11-03/{lost.name}); the last good version is 1: `python -m jobs.maintain restore --results "
        f"{output} --table series --version 1`."]
    assert problems[0].endswith(f"the last good version is 1: `python -m jobs.maintain restore --results {output} "
                                f"--table predictions --version 1`.")
    assert all(problem in verified.stderr for problem in problems)

    # the jobs that read the tables say which table is damaged, in one line, with no native backtrace
    archive = tmp_path / "in"
    archive.mkdir()
    (archive / "a.png").write_bytes((SAMPLES / "archive" / "loose" / "tumor-y147.png").read_bytes())
    screened = job("jobs.screen", "--input", str(archive), "--output", output)
    queried = job("jobs.query", "summary", "--results", output)
    optimized = job("jobs.maintain", "optimize", "--results", output)
    for done in (screened, queried, optimized):
        assert done.returncode == 2, done.stderr
        assert "the predictions table" in done.stderr.lower() and "clone3" not in done.stderr
        assert "Traceback" not in done.stderr

    for table in ("predictions", "series"):
        restored = job("jobs.maintain", "restore", "--results", output, "--table", table, "--version", "1")
        assert restored.returncode == 1, restored.stderr  # whole again, but runs still records the third night
    summary = json.loads(restored.stdout)
    assert summary["new_version"] == 3 and summary["problems"] == [
        f"The {table} table holds 0 row(s) of run run-2 for 2026-11-03 where the runs table records 1; screening "
        f"2026-11-03 again (`python -m jobs.screen ... --output {output} --run-date 2026-11-03`) replaces its rows."
        for table in ("predictions", "series")]
    assert [path.name for path in (tmp_path / "results" / "predictions" / "_delta_log_damaged").rglob("*.json")] \
        == [last_entry.name]  # moved aside, not deleted
    assert job("jobs.maintain", "restore", "--results", output, "--table", "runs", "--version", "1").returncode == 0
    assert job("jobs.maintain", "verify", "--results", output).returncode == 0
    assert read(output) == [("run-0", "0.dcm"), ("run-1", "1.dcm")] and run_ids(output) == ["run-0", "run-1"]


def test_verify_names_a_commit_left_half_done_and_rows_runs_does_not_account_for(tmp_path):
    output = str(tmp_path / "results")
    dates = nights(output, 2)
    stage(output, "run-late", ["late.dcm"], run_date=dates[0], minute=9)
    staged = tables.staged_batches(tables.work_uri(output, "run-late", tables.PREDICTIONS),
                                    tables.TABLE_SCHEMAS[tables.PREDICTIONS])
    tables.commit_table(output, tables.PREDICTIONS, staged, "run-late", dates[0])  # then the driver died
    assert maintenance.verify(output) == [
        f"Run run-late died while committing (its complete work waits in {tables.work_uri(output, 'run-late')}); "
        f"`python -m jobs.maintain recover --results {output}` commits it.",
        f"The predictions table holds 1 row(s) of run run-late for {dates[0]}, a run the runs table does not record "
        f"(an unfinished commit); screening {dates[0]} again (`python -m jobs.screen ... --output {output} "
        f"--run-date {dates[0]}`) replaces its rows.",
        f"The predictions table holds 0 row(s) of run run-0 for {dates[0]} where the runs table records 1; "
        f"screening {dates[0]} again (`python -m jobs.screen ... --output {output} --run-date {dates[0]}`) replaces "
        f"its rows."]
    tables.recover(output)
    assert maintenance.verify(output) == []
