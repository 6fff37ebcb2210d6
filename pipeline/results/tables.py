"""The results tables: three Delta Lake tables under one output, committed so that a run counts completely or not
at all, on local disk and on S3.

``<output>/predictions`` and ``<output>/series`` are partitioned by ``run_date``; ``<output>/runs`` holds one row
per run. Every Delta reader (deltalake, pandas, Polars, DuckDB, Spark, Trino) sees only committed table versions,
and each table's history is its time travel.

A run works in ``<output>/_work/<run_id>/``: the driver streams its scored predictions there, the series summary
and the run's ``runs`` row follow, and a ``READY`` marker says the work is complete. Then it commits, one Delta
transaction per table, in the order **predictions -> series -> runs**; predictions and series replace the rows of
the run's date (an overwrite with a ``run_date`` predicate), runs appends. Each commit carries the run id in its
commit metadata, so a commit is never made twice. The ``runs`` table is the record of complete runs: a reader that
must be exact joins with it (``pipeline.results.views`` and ``jobs.query`` do).

What a run killed at any moment leaves:
- before ``READY``: nothing any table shows. The next run of the output deletes the work folder.
- between two commits: the next run of the output (or ``python -m jobs.maintain recover``) finishes the commits
  from the work folder before its own work: the run's results land whole, once. Until then the tables show the
  partial commit. Readers (``read_table``, ``pipeline.results.views``, so ``jobs.query`` and the report) read each table as
  of its last commit not made by such a run (``settled_version``): until the run's ``runs`` row lands they see
  the earlier complete night of that date, whose rows the partial commit has replaced in the latest version.
A lock (``pipeline.results.run_lock``) keeps two runs from writing one output at once; Delta's optimistic concurrency
rejects a conflicting commit should two ever race past it.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import urllib.parse
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError

from infra import storage
from pipeline import schema as col

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions"
SERIES = "series"
RUNS = "runs"
TABLES = (PREDICTIONS, SERIES, RUNS)  # also the commit order
PARTITIONED_TABLES = (PREDICTIONS, SERIES)
TABLE_SCHEMAS = {PREDICTIONS: col.PREDICTIONS_SCHEMA, SERIES: col.SERIES_SCHEMA, RUNS: col.RUNS_SCHEMA}
WORK = "_work"
READY = "READY"
COMMIT_RUN_ID = "mri_screen_run_id"  # commit metadata key naming the run that made a commit
MAINTENANCE_COMMIT = "maintenance"  # the run id of commits by jobs.maintain (compaction, restore)
MIGRATED_PREFIX = "migrated-"  # jobs.maintain migrate commits a migrated run's rows as "migrated-<run id>"
RECENT_COMMITS = 20  # how far back a table's history is searched for an interrupted run's commit
# rows a Parquet row group holds, staged or committed: a writer holds one group in memory, so memory stays flat
# however large the run (the Delta writer's default group of about a million rows grew 0.9 KB a row here)
ROWS_PER_GROUP = 20_000


class ResultsError(storage.StorageError):
    """An output that is not a results output this version can write or read; the message says what to do."""


class CommitError(RuntimeError):
    """A run's commit failed part-way; its work folder stays, and the next run of the output finishes it."""


def table_uri(output: str, table: str) -> str:
    return storage.join(output, table)


def work_uri(output: str, run_id: str, *parts: str) -> str:
    return storage.join(output, WORK, run_id, *parts)


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def check_writable(output: str) -> None:
    """Write and delete a probe file; raises StorageError before any work when the output is not writable."""
    probe = storage.join(output, f"_write_probe_{uuid.uuid4().hex}")
    storage.write_bytes(probe, b"")
    storage.delete_file(probe)


def check_layout(output: str) -> None:
    """Refuse an output this version cannot use, with what to do about it: one written by the Parquet layout before
    Delta tables, or one with a damaged table (a log that cannot be read, a data file its log names missing)."""
    if storage.is_dir(storage.join(output, RUNS)) and not is_delta(output, RUNS):
        raise ResultsError(
            f"{output} holds results in the earlier Parquet layout (no Delta transaction log); convert it once with "
            f"`python -m jobs.maintain migrate --results {output}`, then run again")
    for table in TABLES:
        delta = open_table(output, table)
        missing = missing_files(delta, table_uri(output, table)) if delta is not None else []
        if missing:
            raise ResultsError(f"the {table} table at {table_uri(output, table)} is damaged: version "
                               f"{delta.version()} names {len(missing)} data file(s) that do not exist (first: "
                               f"{missing[0]}); {VERIFY_HINT.format(output=output)}")


VERIFY_HINT = "`python -m jobs.maintain verify --results {output}` names the damage and the version to restore"


def first_line(error: BaseException) -> str:
    """An error's first line: delta-rs appends a native backtrace to its messages, which says nothing to a user."""
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


def held_files(uri: str) -> dict[str, int]:
    """The files a table's folder holds, relative to it, with their sizes: one listing."""
    return {urllib.parse.unquote(storage.relative_to(uri, file)): size
            for file, size, _ in storage.list_file_versions(uri)}


def missing_files(delta: DeltaTable, uri: str, held: dict[str, int] | None = None) -> list[str]:
    """The data files the table's loaded version names that its folder does not hold (``held``, else one listing
    of it), sorted, relative to the table."""
    named = {urllib.parse.unquote(path) for path in pa.table(delta.get_add_actions(flatten=False))["path"].to_pylist()}
    return sorted(named - (held_files(uri) if held is None else held).keys())


def is_delta(output: str, table: str) -> bool:
    return storage.exists(storage.join(output, table, "_delta_log"))


def open_table(output: str, table: str, version: int | datetime.datetime | None = None) -> DeltaTable | None:
    """The Delta table (at ``version``: a number or a time), or None while the output has no such table (or had
    none yet at that time)."""
    uri = table_uri(output, table)
    number = version if isinstance(version, int) else None  # loaded alone: a damaged later entry is not read
    try:
        delta = DeltaTable(uri, version=number, storage_options=storage.delta_options(uri))
    except TableNotFoundError:
        return None
    except (DeltaError, OSError) as error:
        at = "" if number is None else f" at version {number}"
        raise ResultsError(f"the {table} table at {uri} cannot be read{at}, its transaction log is damaged or "
                           f"unreachable ({first_line(error)}); {VERIFY_HINT.format(output=output)}") from error
    if version is not None and number is None:
        try:
            delta.load_as_version(version)
        except (DeltaError, OSError, ValueError) as error:
            raise ResultsError(f"the {table} table at {uri} has no readable version {version} "
                               f"({first_line(error)})") from error
        if not existed_at(output, table, delta, version):
            return None
    return delta


def dataset(output: str, table: str, version: int | datetime.datetime | None = None) -> pads.Dataset:
    """A table as a pyarrow dataset in its declared schema (filters and column selection push down to the files;
    columns a table written by an earlier version lacks read as nulls); a table not written yet is empty."""
    schema = TABLE_SCHEMAS[table]
    delta = open_table(output, table, version)
    if delta is None:
        return pads.dataset(schema.empty_table())
    return delta.to_pyarrow_dataset().replace_schema(schema)


def complete_runs(runs: pads.Dataset) -> set[str]:
    """The run ids the ``runs`` table (as a dataset) records: the runs whose every commit has landed."""
    return set(runs.to_table(columns=[col.RUN_ID])[col.RUN_ID].to_pylist())


def commit_info(output: str, table: str, version: int) -> dict:
    """The commit information of the table's ``version``; empty when its log entry has none or is gone (cleaned
    up after a checkpoint) or unreadable."""
    entry = storage.join(table_uri(output, table), "_delta_log", f"{version:020d}.json")
    try:
        lines = storage.read_text(entry).splitlines()
    except (storage.StorageError, UnicodeDecodeError):
        return {}
    for line in lines:
        try:
            action = json.loads(line) if line.strip() else {}
        except ValueError:
            return {}
        if isinstance(action, dict) and isinstance(action.get("commitInfo"), dict):
            return action["commitInfo"]
    return {}


def commit_run_id(output: str, table: str, version: int) -> str | None:
    """The run id in the commit information of the table's ``version``; None when it names none or its log entry
    is gone or unreadable."""
    return commit_info(output, table, version).get(COMMIT_RUN_ID)


def committed_at(output: str, table: str, version: int) -> datetime.datetime | None:
    """When the table's ``version`` was committed (its commit information's timestamp), or None when unknown."""
    stamp = commit_info(output, table, version).get("timestamp")
    if not isinstance(stamp, (int, float)) or isinstance(stamp, bool):
        return None
    return datetime.datetime.fromtimestamp(stamp / 1000, datetime.timezone.utc)


def existed_at(output: str, table: str, delta: DeltaTable, moment: datetime.datetime) -> bool:
    """Whether the table loaded as of ``moment`` existed then: Delta loads its first version for any earlier
    moment, so a version committed after ``moment`` means the table was not there yet."""
    committed = committed_at(output, table, delta.version())
    return committed is None or committed <= moment


def still_committing(run_id: str | None, complete: set[str]) -> bool:
    """Whether a commit by ``run_id`` belongs to a run whose ``runs`` row has not landed: a run killed (or still
    busy) between its table commits. Maintenance commits and commits naming no run are never such."""
    if run_id is None or run_id == MAINTENANCE_COMMIT:
        return False
    return run_id.removeprefix(MIGRATED_PREFIX) not in complete


def settled_version(output: str, table: str, delta: DeltaTable, complete: set[str]) -> int:
    """The table's version to read: the loaded one, less the commits on top of it made by runs not in
    ``complete`` (at most ``RECENT_COMMITS``); -1 when every commit of the table is such (no settled version)."""
    version = delta.version()
    for _ in range(RECENT_COMMITS):
        if version < 0 or not still_committing(commit_run_id(output, table, version), complete):
            break
        version -= 1
    return version


def table_datasets(output: str, table: str, complete: set[str],
                   version: int | datetime.datetime | None = None) -> tuple[pads.Dataset, pads.Dataset]:
    """A partitioned table as two datasets in its declared schema: every committed row (at ``version``), and the
    rows as of its settled version (``settled_version``), which is what readers read; one dataset twice when no
    run is between its commits."""
    schema = TABLE_SCHEMAS[table]
    delta = open_table(output, table, version)
    if delta is None:
        return (pads.dataset(schema.empty_table()),) * 2
    latest = delta.to_pyarrow_dataset().replace_schema(schema)
    settled = settled_version(output, table, delta, complete)
    if settled == delta.version():
        return latest, latest
    logger.info("the %s table's version %d holds a commit of a run that is not complete; read as of version %d",
                table, delta.version(), settled)
    if settled < 0:
        return latest, pads.dataset(schema.empty_table())
    delta.load_as_version(settled)
    return latest, delta.to_pyarrow_dataset().replace_schema(schema)


def read_table(output: str, table: str, columns: list[str] | None = None) -> pa.Table:
    """A table's rows as readers see them: for ``predictions`` and ``series``, as of the table's settled version
    (an earlier complete night stays visible while a later run of its date is between commits) and only the rows
    of runs recorded in ``runs``."""
    runs = dataset(output, RUNS)
    if table == RUNS:
        return runs.to_table(columns=columns).select(columns or TABLE_SCHEMAS[table].names)
    complete = complete_runs(runs)
    _, settled = table_datasets(output, table, complete)
    rows = settled.to_table(columns=None if columns is None else sorted(set(columns) | {col.RUN_ID}))
    rows = rows.filter(pc.is_in(rows[col.RUN_ID], value_set=pa.array(sorted(complete), pa.string())))
    return rows.select(columns or TABLE_SCHEMAS[table].names)


def write_parquet(table: pa.Table, uri: str) -> None:
    """One Parquet file, written whole (a reader never sees half of it)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(uri, buffer.getvalue())


class ParquetParts:
    """Rows streamed into numbered Parquet files under ``uri`` (``part-00000.parquet``...), each written whole.
    Rows wait as Arrow tables only until ``rows_per_group`` have come (one row group), then wait compressed in the
    file being built, so memory stays flat however many rows pass: about 10 MB here, not the run's size."""

    def __init__(self, uri: str, schema: pa.Schema, rows_per_file: int = 500_000,
                 rows_per_group: int = ROWS_PER_GROUP, name: str = "part"):
        self.uri, self.schema, self.rows_per_file, self.rows_per_group = uri, schema, rows_per_file, rows_per_group
        self.name = name  # files are <name>-00000.parquet...: two writers may share a folder under two names
        self.pending, self.pending_rows, self.parts = [], 0, 0
        self.buffer, self.writer, self.file_rows = None, None, 0

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        if self.pending_rows >= self.rows_per_group:
            self.write_group()

    def write_group(self) -> None:
        if not self.pending_rows:
            return
        if self.writer is None:
            self.buffer = io.BytesIO()
            self.writer = pq.ParquetWriter(self.buffer, self.schema)
        group = pa.concat_tables(self.pending)
        self.writer.write_table(group, row_group_size=group.num_rows)
        self.file_rows += self.pending_rows
        self.pending, self.pending_rows = [], 0
        if self.file_rows >= self.rows_per_file:
            self.write_file()

    def write_file(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        storage.write_bytes(storage.join(self.uri, f"{self.name}-{self.parts:05d}.parquet"), self.buffer.getvalue())
        self.parts, self.buffer, self.writer, self.file_rows = self.parts + 1, None, None, 0

    def close(self) -> None:
        self.write_group()
        self.write_file()


def staged_dataset(uri: str, schema: pa.Schema) -> pads.Dataset:
    """The Parquet files under ``uri`` as one dataset in ``schema`` (empty when there are none), read lazily. Files
    are listed here, so a folder-marker object on S3 is never taken for a file."""
    files = [file for file in storage.list_files(uri) if file.endswith(".parquet")]
    if not files:
        return pads.dataset(schema.empty_table())
    filesystem, _ = storage.resolve(uri)
    return pads.dataset([storage.resolve(file)[1] for file in files], schema=schema, format="parquet",
                        filesystem=filesystem)


def staged_batches(uri: str, schema: pa.Schema, columns: list[str] | None = None) -> pa.RecordBatchReader:
    """The Parquet files under ``uri`` as one stream of record batches in ``schema`` (its ``columns``, if given),
    read a row group at a time with no read-ahead, so memory holds about one group however many rows the files
    hold (a pyarrow dataset scan reads batches ahead: about 0.4 KB a row more at a million rows, measured). Columns
    a file lacks (staged by an earlier version) read as nulls. Consumed once."""
    target = schema if columns is None else pa.schema([schema.field(name) for name in columns])
    files = [file for file in storage.list_files(uri) if file.endswith(".parquet")]

    def batches():
        for file in files:
            filesystem, path = storage.resolve(file)
            with filesystem.open_input_file(path) as handle:
                parquet = pq.ParquetFile(handle)
                present = [name for name in target.names if name in parquet.schema_arrow.names]
                for batch in parquet.iter_batches(batch_size=ROWS_PER_GROUP, columns=present):
                    yield pa.RecordBatch.from_arrays(
                        [batch.column(field.name).cast(field.type) if field.name in present
                         else pa.nulls(batch.num_rows, field.type) for field in target], schema=target)

    return pa.RecordBatchReader.from_batches(target, batches())


def stage_run_row(output: str, row: dict) -> None:
    """Write the run's ``runs`` row beside its staged tables, then ``READY``: from here on the run will commit,
    now or, if it dies, at the start of the next run of the output."""
    run_row = pa.Table.from_pylist([row], schema=col.RUNS_SCHEMA)
    write_parquet(run_row, work_uri(output, row[col.RUN_ID], RUNS, "run.parquet"))
    storage.write_text(work_uri(output, row[col.RUN_ID], READY), row[col.RUN_DATE])


def committed_by(output: str, table: str, run_id: str) -> bool:
    """Whether one of the table's recent commits was made by ``run_id``."""
    delta = open_table(output, table)
    if delta is None:
        return False
    return any(entry.get(COMMIT_RUN_ID) == run_id for entry in delta.history(limit=RECENT_COMMITS))


def commit_run(output: str, run_id: str) -> None:
    """Commit a READY run's staged tables in order, each at most once, then remove its work folder."""
    run_date = storage.read_text(work_uri(output, run_id, READY)).strip()
    for table in TABLES:
        if committed_by(output, table, run_id):
            continue
        staged = work_uri(output, run_id, table)
        try:  # the rows stream from the staged files into the commit, a row group at a time
            commit_table(output, table, staged_batches(staged, TABLE_SCHEMAS[table]), run_id, run_date)
        except (DeltaError, OSError) as error:
            raise CommitError(f"run {run_id}'s commit to the {table} table failed: {error}") from error
        logger.info("run %s: %d %s row(s) committed", run_id,
                    staged_dataset(staged, TABLE_SCHEMAS[table]).count_rows(), table)
    storage.delete_tree(work_uri(output, run_id))


def commit_table(output: str, table: str, rows: pa.Table | pa.RecordBatchReader, run_id: str, run_date: str) -> None:
    """One Delta commit of ``rows`` (in the table's schema) to ``table``; columns added by a later version merge
    into an older table."""
    uri = table_uri(output, table)
    properties = CommitProperties(custom_metadata={COMMIT_RUN_ID: run_id})
    writer = WriterProperties(max_row_group_size=ROWS_PER_GROUP)
    if table == RUNS:
        write_deltalake(uri, rows, mode="append", schema_mode="merge", commit_properties=properties,
                        storage_options=storage.delta_options(uri))
        return
    if isinstance(rows, pa.Table):
        rows = rows.cast(TABLE_SCHEMAS[table])
    write_deltalake(uri, rows, mode="overwrite", partition_by=[col.RUN_DATE],
                    predicate=f"{col.RUN_DATE} = '{run_date}'", schema_mode="merge", commit_properties=properties,
                    writer_properties=writer, storage_options=storage.delta_options(uri))


def recover(output: str, keep: str | None = None) -> list[str]:
    """Finish the commits of READY runs that died part-way, oldest first, and delete the work of runs that died
    before READY (all but ``keep``, the caller's own). Returns the run ids committed. Needs the output's lock."""
    finished = []
    for folder in storage.list_dirs(storage.join(output, WORK)):
        run_id = folder.rstrip("/").rsplit("/", 1)[-1]
        if run_id == keep:
            continue
        if storage.exists(work_uri(output, run_id, READY)):
            logger.warning("run %s died while committing; finishing its commit now", run_id)
            commit_run(output, run_id)
            finished.append(run_id)
        else:
            storage.delete_tree(folder)
    return finished


def history(output: str) -> list[dict]:
    """Every commit of the three tables, newest first: table, version, time, operation, run id, rows added."""
    entries = []
    for table in TABLES:
        delta = open_table(output, table)
        for entry in delta.history() if delta is not None else []:
            metrics = entry.get("operationMetrics") or {}
            entries.append({"table": table, "version": entry.get("version"),
                            "committed_at": datetime.datetime.fromtimestamp(entry["timestamp"] / 1000,
                                                                            datetime.timezone.utc),
                            "operation": entry.get("operation"), "run_id": entry.get(COMMIT_RUN_ID),
                            "rows_added": metrics.get("num_added_rows"),
                            "predicate": (entry.get("operationParameters") or {}).get("predicate")})
    return sorted(entries, key=lambda entry: (entry["committed_at"], entry["table"]), reverse=True)

