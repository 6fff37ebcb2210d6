"""The results commit protocol on real Parquet files: a run interrupted at any step leaves every date reading as
exactly one complete run, and the next run of the date replaces it without duplicates."""

import datetime

import pyarrow as pa
import pytest

from infra import storage
from pipeline import results

DATE = "2026-11-03"
KEY = {results.PREDICTIONS: "source_uri", results.SERIES: "series_key"}  # a column that names each row
RUNS_SCHEMA = pa.schema([("run_id", pa.string()), ("run_date", pa.string()), ("finished_at", pa.timestamp("us"))])


def stage(output: str, run_id: str, uris: list[str]) -> None:
    for table in results.PARTITIONED_TABLES:
        schema = results.TABLE_SCHEMAS[table]
        rows = pa.Table.from_pylist([{"run_id": run_id, KEY[table]: uri} for uri in uris], schema=schema)
        rows = rows.drop_columns(["run_date"])
        results.write_table(rows, storage.join(results.staging_uri(output, table, DATE, run_id), "part-0.parquet"))


def commit(output: str, run_id: str, minute: int) -> None:
    finished = datetime.datetime(2026, 11, 3, 2, minute)
    results.commit(output, {"run_id": run_id, "run_date": DATE, "finished_at": finished}, RUNS_SCHEMA)


def complete_run(output: str, run_id: str, uris: list[str], minute: int) -> None:
    results.clear_stale_staging(output, DATE)
    stage(output, run_id, uris)
    for table in results.PARTITIONED_TABLES:
        results.publish(output, table, DATE, run_id)
    commit(output, run_id, minute)
    results.remove_superseded(output, DATE, run_id)


def read(output: str, table: str = results.PREDICTIONS) -> list[tuple[str, str]]:
    return sorted((row["run_id"], row[KEY[table]]) for row in results.read_table(output, table).to_pylist())


@pytest.fixture
def output(tmp_path) -> str:
    output = str(tmp_path / "results")
    complete_run(output, "run-a", ["x.dcm", "y.dcm"], minute=1)
    return output


@pytest.mark.parametrize("table", results.PARTITIONED_TABLES)
def test_a_run_killed_after_moving_its_files_but_before_its_commit_is_invisible(output, table):
    stage(output, "run-b", ["x.dcm", "y.dcm", "z.dcm"])
    results.publish(output, table, DATE, "run-b")  # killed here: files in the partition, no runs row
    names = [uri.rsplit("/", 1)[-1] for uri in storage.list_files(results.partition_uri(output, table, DATE))]
    assert any(name.startswith("run-b-") for name in names)
    assert read(output, table) == [("run-a", "x.dcm"), ("run-a", "y.dcm")]


def test_a_run_killed_after_its_commit_but_before_cleanup_reads_as_itself(output):
    stage(output, "run-b", ["x.dcm", "z.dcm"])
    for table in results.PARTITIONED_TABLES:
        results.publish(output, table, DATE, "run-b")
    commit(output, "run-b", minute=2)  # killed here: run-a's files still in the partition
    assert read(output) == [("run-b", "x.dcm"), ("run-b", "z.dcm")]


def test_the_next_run_of_the_date_clears_what_a_killed_run_left(output):
    stage(output, "run-b", ["q.dcm"])
    results.publish(output, results.PREDICTIONS, DATE, "run-b")  # killed: half published, half staged
    complete_run(output, "run-c", ["x.dcm", "y.dcm", "z.dcm"], minute=3)
    assert read(output) == [("run-c", "x.dcm"), ("run-c", "y.dcm"), ("run-c", "z.dcm")]
    for table in results.PARTITIONED_TABLES:
        names = [uri.rsplit("/", 1)[-1] for uri in storage.list_files(results.partition_uri(output, table, DATE))]
        assert names and all(name.startswith("run-c-") for name in names)
        assert not storage.list_files(storage.join(output, table, results.STAGING))
    assert [row["run_id"] for row in results.read_table(output, results.RUNS).to_pylist()] == ["run-a", "run-c"]


def test_a_local_write_is_never_seen_half_done(tmp_path):
    target = tmp_path / "runs" / "one.parquet"
    results.write_table(pa.table({"run_id": ["a"], "source_uri": ["b"]}), str(target))
    assert [path.name for path in target.parent.iterdir()] == ["one.parquet"]  # no temporary left beside it


def test_every_state_a_run_can_leave_reads_without_error(tmp_path):
    """A new output, a committed run that wrote no rows, and a table folder that exists but holds no file all read
    as tables with their declared columns and no rows."""
    output = str(tmp_path / "results")
    for table in (results.PREDICTIONS, results.SERIES, results.RUNS):
        assert results.read_table(output, table).schema.names == results.TABLE_SCHEMAS[table].names
    commit(output, "run-empty", minute=5)
    for table in results.PARTITIONED_TABLES:
        (tmp_path / "results" / table / f"run_date={DATE}").mkdir(parents=True)
        empty = results.read_table(output, table)
        assert empty.num_rows == 0 and "run_id" in empty.schema.names
    assert [row["run_id"] for row in results.read_table(output, results.RUNS).to_pylist()] == ["run-empty"]
