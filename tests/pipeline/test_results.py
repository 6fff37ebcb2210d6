"""The results commit protocol on real Delta tables: a run interrupted at any step leaves nothing half-counted, the
next run of the output finishes an interrupted commit exactly once, a re-run of a date replaces its rows, and any
Delta reader (deltalake, DuckDB) sees the same committed rows. One writer at a time, by the output's lock."""

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time

import deltalake
import pyarrow as pa
import pytest

from infra import storage
from pipeline.results import maintenance, queries, run_lock, tables, views
from tests.conftest import ROOT

DATE, OTHER_DATE = "2026-11-03", "2026-11-04"
KEY = {tables.PREDICTIONS: "source_uri", tables.SERIES: "series_key"}  # a column that names each row


def stage(output: str, run_id: str, uris: list[str], run_date: str = DATE, minute: int = 0,
          series_values: dict[str, dict] | None = None) -> None:
    """A run's complete work folder, READY to commit; ``series_values``: more columns of a series row, by key."""
    for table in tables.PARTITIONED_TABLES:
        values = (series_values or {}) if table == tables.SERIES else {}
        rows = pa.Table.from_pylist([{"run_id": run_id, "run_date": run_date, KEY[table]: uri, **values.get(uri, {})}
                                     for uri in uris], schema=tables.TABLE_SCHEMAS[table])
        tables.write_parquet(rows, storage.join(tables.work_uri(output, run_id, table), "part-0.parquet"))
    finished = datetime.datetime(2026, 11, 3, 2, minute, tzinfo=datetime.timezone.utc)
    tables.stage_run_row(output, {"run_id": run_id, "run_date": run_date, "finished_at": finished})


def read(output: str, table: str = tables.PREDICTIONS) -> list[tuple[str, str]]:
    return sorted((row["run_id"], row[KEY[table]]) for row in tables.read_table(output, table).to_pylist())


def run_ids(output: str) -> list[str]:
    return sorted(row["run_id"] for row in tables.read_table(output, tables.RUNS).to_pylist())


@pytest.fixture
def output(tmp_path) -> str:
    output = str(tmp_path / "results")
    stage(output, "run-a", ["x.dcm", "y.dcm"], minute=1)
    tables.commit_run(output, "run-a")
    return output


def test_an_output_named_by_a_relative_path_is_whole_to_every_check(tmp_path, monkeypatch):
    """`make demo` writes to `out/demo`: a relative output must not read as a table whose files are missing."""
    monkeypatch.chdir(tmp_path)
    stage("results", "run-a", ["x.dcm"], minute=1)
    tables.commit_run("results", "run-a")
    tables.check_layout("results")
    assert maintenance.verify("results") == []
    assert read("results") == [("run-a", "x.dcm")]


def test_a_run_killed_before_it_was_ready_is_invisible_and_its_work_is_cleared(output):
    stage(output, "run-b", ["x.dcm", "z.dcm"], minute=2)
    storage.delete_file(tables.work_uri(output, "run-b", tables.READY))  # killed while staging
    assert read(output) == [("run-a", "x.dcm"), ("run-a", "y.dcm")]
    assert tables.recover(output) == []
    assert not storage.exists(tables.work_uri(output, "run-b"))
    assert run_ids(output) == ["run-a"]


@pytest.mark.parametrize("committed", [1, 2])
def test_a_commit_cut_short_is_finished_once_by_the_next_run(output, committed):
    stage(output, "run-b", ["x.dcm", "z.dcm"], minute=2)
    for table in tables.TABLES[:committed]:  # killed after this many of the three table commits
        staged = tables.work_uri(output, "run-b", table)
        rows = tables.staged_batches(staged, tables.TABLE_SCHEMAS[table]).read_all()
        tables.commit_table(output, table, rows, "run-b", DATE)
    assert run_ids(output) == ["run-a"]
    assert read(output) == [("run-a", "x.dcm"), ("run-a", "y.dcm")]  # the earlier night, until run-b is complete
    assert tables.recover(output, keep="run-c") == ["run-b"]
    assert read(output) == [("run-b", "x.dcm"), ("run-b", "z.dcm")]
    assert read(output, tables.SERIES) == [("run-b", "x.dcm"), ("run-b", "z.dcm")]
    assert run_ids(output) == ["run-a", "run-b"]
    commits = [entry for entry in tables.history(output) if entry["run_id"] == "run-b"]
    assert sorted(entry["table"] for entry in commits) == sorted(tables.TABLES)  # each table once
    assert not storage.exists(tables.work_uri(output, "run-b"))


# The driver's commit as a process of its own, SIGKILLed the moment it logs its predictions commit.
KILLED_AFTER_PREDICTIONS = """
import logging, os, signal, sys
from pipeline.results import tables

class KillAfterPredictions(logging.Handler):
    def emit(self, record):
        if "predictions row(s) committed" in record.getMessage():
            os.kill(os.getpid(), signal.SIGKILL)

logging.getLogger("pipeline.results.tables").addHandler(KillAfterPredictions())
logging.getLogger("pipeline.results.tables").setLevel(logging.INFO)
tables.commit_run(sys.argv[1], sys.argv[2])
"""


def stage_night(output: str, run_id: str, image: str, series: str, probability: float, minute: int) -> None:
    """A READY run of ``DATE``: one image outside any series and one series, both of ``probability``."""
    flag = {"status": "ok", "tumor_probability": probability, "flagged": probability >= 0.5,
            "predicted_class": "glioma" if probability >= 0.5 else "notumor"}
    for table, row in ((tables.PREDICTIONS, {"source_uri": image}), (tables.SERIES, {"series_key": series})):
        rows = pa.Table.from_pylist([{"run_id": run_id, "run_date": DATE, **row, **flag}],
                                    schema=tables.TABLE_SCHEMAS[table])
        tables.write_parquet(rows, storage.join(tables.work_uri(output, run_id, table), "part-0.parquet"))
    finished = datetime.datetime(2026, 11, 3, 2, minute, tzinfo=datetime.timezone.utc)
    tables.stage_run_row(output, {"run_id": run_id, "run_date": DATE, "finished_at": finished})


def night_as_read(output: str, as_of: datetime.datetime | None = None) -> dict:
    """What readers show of the output: each view's (run, row) pairs and the flagged list jobs.query prints."""
    with views.connect_read_only(output, as_of) as connection:
        shown = {view: sorted(connection.sql(f"SELECT run_id, {KEY[table]} FROM {view}").fetchall())
                 for view, table in (("predictions", tables.PREDICTIONS), ("series", tables.SERIES),
                                     ("current_predictions", tables.PREDICTIONS),
                                     ("current_series", tables.SERIES))}
        flagged = queries.flagged(connection, queries.FlaggedFilter()).to_pylist()
    shown["flagged"] = sorted((row["run_id"], row["series_key"] or row["deciding_source_uri"]) for row in flagged)
    return shown


def test_a_driver_killed_after_its_predictions_commit_leaves_the_earlier_night_readable(tmp_path):
    """Killed between the predictions commit and the series commit, a re-run of a date has replaced the date's
    predictions in the table's latest version; readers still show the earlier complete night, whole, until the
    killed run is finished, then the new night, whole."""
    output = str(tmp_path / "results")
    stage_night(output, "run-a", "a.jpg", "series-a", 0.9, minute=1)
    tables.commit_run(output, "run-a")
    earlier = night_as_read(output)
    assert earlier["flagged"] == [("run-a", "a.jpg"), ("run-a", "series-a")]
    stage_night(output, "run-b", "b.jpg", "series-b", 0.95, minute=2)
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_PREDICTIONS, output, "run-b"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    latest = deltalake.DeltaTable(tables.table_uri(output, tables.PREDICTIONS)).to_pyarrow_table()
    assert set(latest["run_id"].to_pylist()) == {"run-b"}  # the date's rows were replaced by the killed run
    assert [entry["run_id"] for entry in tables.history(output)][:1] == ["run-b"]
    window = datetime.datetime.now(datetime.timezone.utc)
    time.sleep(0.05)
    assert night_as_read(output) == earlier
    assert read(output) == [("run-a", "a.jpg")] and read(output, tables.SERIES) == [("run-a", "series-a")]
    assert any("run-b" in problem for problem in maintenance.verify(output))  # an audit still sees the partial
    assert tables.recover(output) == ["run-b"]
    assert night_as_read(output)["flagged"] == [("run-b", "b.jpg"), ("run-b", "series-b")]
    assert night_as_read(output, as_of=window) == earlier  # as reported during the window


def test_a_rerun_of_a_date_replaces_its_rows_and_leaves_other_dates(output):
    stage(output, "run-b", ["q.dcm"], run_date=OTHER_DATE, minute=2)
    tables.commit_run(output, "run-b")
    stage(output, "run-c", ["x.dcm", "y.dcm", "z.dcm"], minute=3)
    tables.commit_run(output, "run-c")
    assert read(output) == [("run-b", "q.dcm"), ("run-c", "x.dcm"), ("run-c", "y.dcm"), ("run-c", "z.dcm")]
    assert run_ids(output) == ["run-a", "run-b", "run-c"]


def test_time_travel_and_every_reader_agree(output):
    before = datetime.datetime.now(datetime.timezone.utc)
    time.sleep(0.05)
    stage(output, "run-b", ["z.dcm"], minute=2)
    tables.commit_run(output, "run-b")
    with views.connect(output, as_of=before) as then:
        assert then.sql("SELECT run_id, source_uri FROM predictions ORDER BY 2").fetchall() == [
            ("run-a", "x.dcm"), ("run-a", "y.dcm")]
    with views.connect(output) as now:
        duck = sorted(now.sql("SELECT run_id, source_uri FROM predictions").fetchall())
    delta = deltalake.DeltaTable(tables.table_uri(output, tables.PREDICTIONS)).to_pyarrow_table()
    assert duck == sorted(zip(delta["run_id"].to_pylist(), delta["source_uri"].to_pylist())) == read(output)


def test_current_views_take_each_file_from_the_latest_run_that_scored_it(output):
    stage(output, "run-b", ["y.dcm", "z.dcm"], run_date=OTHER_DATE, minute=2)
    tables.commit_run(output, "run-b")
    with views.connect(output) as connection:
        current = sorted(connection.sql("SELECT source_uri, run_id FROM current_predictions").fetchall())
        series = sorted(connection.sql("SELECT series_key, run_id FROM current_series").fetchall())
    assert current == series == [("x.dcm", "run-a"), ("y.dcm", "run-b"), ("z.dcm", "run-b")]


def series_row(study: str, probability: float | None, predicted: str | None = None) -> dict:
    return {"study_key": study, "patient_key": "patient", "study_date": "20261101", "tumor_probability": probability,
            "flagged": None if probability is None else probability >= 0.5, "predicted_class": predicted}


def test_a_study_takes_its_most_suspicious_current_series_and_is_flagged_when_any_series_is(output):
    stage(output, "run-b", ["s1", "s2", "s3", "s4", "s5"], run_date=OTHER_DATE, minute=2, series_values={
        "s1": series_row("one", 0.2, "notumor"), "s2": series_row("one", 0.8, "glioma"), "s3": series_row("one", None),
        "s4": series_row("two", 0.1, "notumor"), "s5": series_row("three", None)})
    tables.commit_run(output, "run-b")
    stage(output, "run-c", ["s4"], run_date="2026-11-05", minute=3, series_values={"s4": series_row("two", 0.3)})
    tables.commit_run(output, "run-c")  # a later night summarised s4 again: the study reads its current row
    with views.connect(output) as connection:
        studies = connection.sql("""
            SELECT study_key, patient_key, series, series_flagged, round(tumor_probability::DOUBLE, 4), flagged,
                   deciding_series_key, predicted_class FROM current_studies ORDER BY study_key""").fetchall()
    assert studies == [("one", "patient", 3, 1, 0.8, True, "s2", "glioma"),
                       ("three", "patient", 1, 0, None, None, None, None),
                       ("two", "patient", 1, 0, 0.3, False, "s4", None)]


def test_every_state_an_output_can_be_in_reads_without_error(tmp_path):
    """A new output, and a committed run that wrote no rows, read as tables with their declared columns."""
    output = str(tmp_path / "results")
    for table in tables.TABLES:
        assert tables.read_table(output, table).schema.names == tables.TABLE_SCHEMAS[table].names
    stage(output, "run-empty", [], minute=5)
    tables.commit_run(output, "run-empty")
    assert tables.read_table(output, tables.PREDICTIONS).num_rows == 0
    assert run_ids(output) == ["run-empty"]


def test_an_output_in_the_earlier_parquet_layout_is_refused_with_what_to_do(tmp_path):
    legacy = tmp_path / "old" / "runs" / "run_date=2026-11-01"
    legacy.mkdir(parents=True)
    (legacy / "run.parquet").write_bytes(b"PAR1")
    with pytest.raises(tables.ResultsError, match="jobs.maintain migrate"):
        tables.check_layout(str(tmp_path / "old"))


def test_a_live_lock_refuses_a_second_writer_and_a_dead_one_is_taken_over(tmp_path):
    output = str(tmp_path / "results")
    with run_lock.RunLock(output, "run-a"):
        with pytest.raises(run_lock.OutputBusyError, match="run-a"):
            run_lock.check_free(output)
    assert not storage.exists(run_lock.lock_uri(output))  # released
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for holder in ({"run_id": "dead", "host": socket.gethostname(), "pid": int(dead.stdout)},
                   {"run_id": "silent", "host": "another-host", "pid": os.getpid(),
                    "heartbeat": time.time() - run_lock.STALE_SECONDS - 1}):
        storage.write_text(run_lock.lock_uri(output), json.dumps({"heartbeat": time.time(), **holder}))
        with run_lock.RunLock(output, "run-b"):
            assert run_lock.read_lock(output)["run_id"] == "run-b"


def test_on_s3_a_second_writer_is_refused_by_the_lock_and_a_racing_commit_by_delta(s3_endpoint):
    """Through the S3 endpoint on localhost: the lock refuses a second run; two commits that raced past it from the
    same table version cannot both land, because delta-rs commits with conditional writes (If-None-Match)."""
    import boto3
    from deltalake.exceptions import CommitFailedError

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="race")
    output = "s3://race/results"
    with run_lock.RunLock(output, "run-a"):
        with pytest.raises(run_lock.OutputBusyError, match="run-a"):
            run_lock.check_free(output)
        stage(output, "run-a", ["x.dcm"], minute=1)
        tables.commit_run(output, "run-a")
    uri = tables.table_uri(output, tables.PREDICTIONS)
    options = storage.delta_options(uri)
    first, second = (deltalake.DeltaTable(uri, storage_options=options) for _ in range(2))
    rows = pa.Table.from_pylist([{"run_id": "run-b", "run_date": DATE, "source_uri": "y.dcm"}],
                                schema=tables.TABLE_SCHEMAS[tables.PREDICTIONS])
    predicate = f"run_date = '{DATE}'"
    deltalake.write_deltalake(first, rows, mode="overwrite", predicate=predicate, storage_options=options)
    with pytest.raises(CommitFailedError):
        deltalake.write_deltalake(second, rows, mode="overwrite", predicate=predicate, storage_options=options)
    assert deltalake.DeltaTable(uri, storage_options=options).version() == first.version()


def test_streamed_rows_land_in_whole_parquet_files_in_order(tmp_path):
    import pyarrow.parquet as pq

    schema = pa.schema([("source_uri", pa.string()), ("frame_index", pa.int32())])
    rows = [{"source_uri": f"s3://archive/{index:05d}.dcm", "frame_index": index % 3} for index in range(2_500)]
    parts = tables.ParquetParts(str(tmp_path / "staged"), schema, rows_per_file=1_000, rows_per_group=300)
    for start in range(0, len(rows), 64):
        parts.write(pa.Table.from_pylist(rows[start:start + 64], schema=schema))
    parts.close()
    files = sorted((tmp_path / "staged").iterdir())
    # batches of 64 rows: groups of 320 (the first count >= 300), files of four groups (the first >= 1,000 rows)
    assert [file.name for file in files] == ["part-00000.parquet", "part-00001.parquet"]
    assert [pq.ParquetFile(file).metadata.num_rows for file in files] == [1_280, 1_220]
    assert [pq.ParquetFile(files[0]).metadata.row_group(group).num_rows for group in range(4)] == [320] * 4
    assert pa.concat_tables(pq.read_table(file) for file in files).to_pylist() == rows
    assert tables.staged_batches(str(tmp_path / "staged"), schema).read_all().num_rows == len(rows)
    empty = tables.ParquetParts(str(tmp_path / "nothing"), schema)
    empty.close()
    assert not (tmp_path / "nothing").exists()


def test_a_commit_writes_row_groups_of_bounded_size_so_the_writer_memory_stays_flat(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    monkeypatch.setattr(tables, "ROWS_PER_GROUP", 5)
    output = str(tmp_path / "results")
    uris = [f"{index:02d}.dcm" for index in range(12)]
    stage(output, "run-a", uris)
    tables.commit_run(output, "run-a")
    table = tables.table_uri(output, tables.PREDICTIONS)
    files = [uri for uri in storage.list_files(table) if uri.endswith(".parquet")]
    groups = [group.num_rows for file in files for group in
              (pq.ParquetFile(file).metadata.row_group(index) for index in range(pq.ParquetFile(file).num_row_groups))]
    assert sum(groups) == 12 and max(groups) <= 5
    assert read(output) == [("run-a", uri) for uri in uris]
