"""Writing the results tables so that a run counts completely or not at all.

Each run writes its ``predictions`` and ``series`` files to ``<table>/_staging/run_date=<date>/<run_id>/`` first
(readers skip names that start with ``_``). Only when both are complete does the run replace each table's
``run_date=<date>/`` partition with its staging folder, and then append its row to ``runs``. A re-run of a date
therefore replaces that date's rows instead of duplicating them, and a run killed half-way leaves the published
partition as it was; its staging folder is cleared by the next run of the same date.
"""

from __future__ import annotations

import datetime
import uuid

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from infra import storage

PREDICTIONS = "predictions"
SERIES = "series"
RUNS = "runs"
STAGING = "_staging"


def partition_name(run_date: str) -> str:
    return f"run_date={run_date}"


def staging_uri(output: str, table: str, run_date: str, run_id: str) -> str:
    return storage.join(output, table, STAGING, partition_name(run_date), run_id)


def partition_uri(output: str, table: str, run_date: str) -> str:
    return storage.join(output, table, partition_name(run_date))


def check_writable(output: str) -> None:
    """Write and delete a probe file; raises StorageError before any work when the output is not writable."""
    probe = storage.join(output, f"_write_probe_{uuid.uuid4().hex}")
    storage.write_bytes(probe, b"")
    filesystem, path = storage.resolve(probe)
    try:
        filesystem.delete_file(path)
    except OSError as error:
        raise storage.StorageError(f"cannot delete in {output}: {error}") from error


def clear_stale_staging(output: str, run_date: str) -> None:
    for table in (PREDICTIONS, SERIES):
        storage.delete_tree(storage.join(output, table, STAGING, partition_name(run_date)))


def publish(output: str, table: str, run_date: str, run_id: str) -> None:
    """Replace the table's partition for ``run_date`` with this run's staged files."""
    staged = staging_uri(output, table, run_date, run_id)
    target = partition_uri(output, table, run_date)
    storage.delete_tree(target)
    if storage.is_dir(staged):
        storage.move_tree(staged, target)


def write_table(table: pa.Table, uri: str) -> None:
    filesystem, path = storage.resolve(uri)
    try:
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(table, path, filesystem=filesystem)
    except OSError as error:
        raise storage.StorageError(f"cannot write {uri}: {error}") from error


def append_run(output: str, row: dict, schema: pa.Schema) -> str:
    uri = storage.join(output, RUNS, partition_name(row["run_date"]), f"{row['run_id']}.parquet")
    write_table(pa.Table.from_pylist([row], schema=schema).drop_columns(["run_date"]), uri)
    return uri


def read_table(output: str, table: str, columns: list[str] | None = None) -> pa.Table:
    """A whole results table (all published partitions), ``run_date`` restored from the partition names."""
    filesystem, path = storage.resolve(storage.join(output, table))
    partitioning = pads.partitioning(pa.schema([("run_date", pa.string())]), flavor="hive")
    return pq.read_table(path, filesystem=filesystem, columns=columns, partitioning=partitioning)


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
