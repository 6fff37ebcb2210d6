"""Writing the results tables so that a run counts completely or not at all, on local disk and on S3.

A run writes its ``predictions`` and ``series`` files to ``<table>/_staging/run_date=<date>/<run_id>/`` first
(readers skip names that start with ``_``). When both are complete it moves them into each table's
``run_date=<date>/`` partition, every file name prefixed with its run id, and then **commits** by writing its row
to ``runs`` (one object: atomic on S3, a rename on disk). Only then are the files of earlier runs of that date
removed. The ``runs`` table is the commit log: :func:`read_table` returns, for each date, the rows of the latest
committed run only. So a run killed at any point (mid-scoring, mid-move, before cleanup) leaves every date
reading exactly as one complete run, and a re-run of a date replaces its rows instead of duplicating them; the
next run of the date clears what a killed run left behind.
"""

from __future__ import annotations

import datetime
import io
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from infra import storage
from pipeline import schema as col

PREDICTIONS = "predictions"
SERIES = "series"
RUNS = "runs"
STAGING = "_staging"
PARTITIONED_TABLES = (PREDICTIONS, SERIES)
TABLE_SCHEMAS = {PREDICTIONS: col.PREDICTIONS_SCHEMA, SERIES: col.SERIES_SCHEMA, RUNS: col.RUNS_SCHEMA}


def partition_name(run_date: str) -> str:
    return f"{col.RUN_DATE}={run_date}"


def staging_uri(output: str, table: str, run_date: str, run_id: str) -> str:
    return storage.join(output, table, STAGING, partition_name(run_date), run_id)


def partition_uri(output: str, table: str, run_date: str) -> str:
    return storage.join(output, table, partition_name(run_date))


def run_file_prefix(run_id: str) -> str:
    return f"{run_id}-"


def check_writable(output: str) -> None:
    """Write and delete a probe file; raises StorageError before any work when the output is not writable."""
    probe = storage.join(output, f"_write_probe_{uuid.uuid4().hex}")
    storage.write_bytes(probe, b"")
    storage.delete_file(probe)


def clear_stale_staging(output: str, run_date: str) -> None:
    """Remove what killed runs of ``run_date`` left in staging (one run per date at a time is assumed)."""
    for table in PARTITIONED_TABLES:
        storage.delete_tree(storage.join(output, table, STAGING, partition_name(run_date)))


def publish(output: str, table: str, run_date: str, run_id: str) -> None:
    """Move the run's staged files into the table's ``run_date`` partition; invisible to readers until commit."""
    staged = staging_uri(output, table, run_date, run_id)
    if storage.is_dir(staged):
        storage.move_files(staged, partition_uri(output, table, run_date), run_file_prefix(run_id))


def commit(output: str, row: dict, schema: pa.Schema) -> str:
    """Append the run's row to ``runs``: from this write on, the run's rows are the ones its date reads."""
    uri = storage.join(output, RUNS, partition_name(row[col.RUN_DATE]), f"{row[col.RUN_ID]}.parquet")
    write_table(pa.Table.from_pylist([row], schema=schema).drop_columns([col.RUN_DATE]), uri)
    return uri


def remove_superseded(output: str, run_date: str, run_id: str) -> int:
    """After a commit: delete the files of every other run in the date's partitions; returns how many."""
    removed = 0
    for table in PARTITIONED_TABLES:
        partition = partition_uri(output, table, run_date)
        if not storage.is_dir(partition):
            continue
        for uri in storage.list_files(partition, recursive=False):
            if not uri.rsplit("/", 1)[-1].startswith(run_file_prefix(run_id)):
                storage.delete_file(uri)
                removed += 1
    return removed


def remove_empty_staging(output: str) -> None:
    """After a run: drop each table's staging folder when no run has files staged in it, so an S3 output keeps no
    zero-byte folder-marker objects (S3 deletions leave a marker for a parent they empty)."""
    for table in PARTITIONED_TABLES:
        staging = storage.join(output, table, STAGING)
        if storage.is_dir(staging) and not storage.list_files(staging):
            storage.delete_tree(staging)


def write_table(table: pa.Table, uri: str) -> None:
    """One Parquet file, written whole (a reader never sees half of it)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(uri, buffer.getvalue())


def read_partitioned(output: str, table: str, columns: list[str] | None = None) -> pa.Table:
    """Every file of a table in its declared schema, ``run_date`` from the partition names; a table with no files
    yet (a new output, or a date whose only run found nothing to score) reads as no rows, never as an error."""
    schema = TABLE_SCHEMAS[table]
    uri = storage.join(output, table)
    if not storage.is_dir(uri):
        return schema.empty_table().select(columns or schema.names)
    filesystem, path = storage.resolve(uri)
    partitioning = pads.partitioning(pa.schema([(col.RUN_DATE, pa.string())]), flavor="hive")
    dataset = pads.dataset(path, schema=schema, format="parquet", filesystem=filesystem, partitioning=partitioning)
    return dataset.to_table(columns=columns)


def committed_runs(output: str) -> dict[str, str]:
    """``run_date`` -> run id of the latest committed run of that date."""
    if not storage.is_dir(storage.join(output, RUNS)):
        return {}
    runs = read_partitioned(output, RUNS, [col.RUN_ID, col.RUN_DATE, col.FINISHED_AT]).to_pylist()
    latest = {}
    for run in sorted(runs, key=lambda run: (run[col.FINISHED_AT], run[col.RUN_ID])):
        latest[run[col.RUN_DATE]] = run[col.RUN_ID]
    return latest


def read_table(output: str, table: str, columns: list[str] | None = None) -> pa.Table:
    """A results table with ``run_date`` restored from the partition names. For ``predictions`` and ``series``,
    only the rows of each date's latest committed run: files of runs that never committed are not read."""
    if table == RUNS:
        return read_partitioned(output, table, columns)
    committed = list(committed_runs(output).values())
    wanted = None if columns is None else list(dict.fromkeys([*columns, col.RUN_ID]))
    rows = read_partitioned(output, table, wanted)
    rows = rows.filter(pc.is_in(rows[col.RUN_ID], value_set=pa.array(committed, pa.string())))
    return rows if columns is None else rows.select(columns)


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
