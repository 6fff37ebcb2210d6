"""Keeping a results output fast and tidy over years of nightly runs, and bringing older outputs forward.

- ``compact``: rewrite each table's small files (one or a few per night) into large ones, one commit per table;
  readers see the same rows before and after.
- ``vacuum``: delete data files no table version newer than the retention period needs. Time travel reaches back
  as far as the retention period, no further.
- ``migrate``: convert an output written by the Parquet layout before Delta tables (files under
  ``<table>/run_date=<date>/``, the latest committed run per date in ``runs``) into Delta tables, once; the old
  files are kept under ``_parquet_layout/`` until the user deletes them.
- ``verify``: every table's log parses, every data file it names exists with the size it names, and the tables
  agree with ``runs`` (each date's rows are those of its latest complete run, as many as that run recorded); each
  problem is one sentence naming the table and the cause, with the way back.
- ``restore``: a table back to an earlier version: a Delta restore (a new version, the history kept) when its log
  reads; when log entries after that version are damaged, those entries are moved aside into
  ``<table>/_delta_log_damaged/<time>/`` (kept, never deleted), which leaves the version the table's latest.
Every operation here holds the output's lock, like a screening run.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import urllib.parse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import DeltaError

from infra import storage
from pipeline.results import tables
from pipeline import schema as col

logger = logging.getLogger(__name__)

LEGACY = "_parquet_layout"
DAMAGED_LOG = "_delta_log_damaged"
GOOD_VERSION_SEARCH = 50  # versions looked back through for the last good one
LOG_FILE = re.compile(r"(\d{20})\.(json|crc|checkpoint\.parquet|checkpoint\.\d+\.\d+\.parquet)$")


def compact(output: str) -> dict[str, dict]:
    """Bin-pack each table's files; returns the metrics delta-rs reports per table."""
    report = {}
    for table in tables.TABLES:
        delta = tables.open_table(output, table)
        if delta is not None:
            metrics = delta.optimize.compact(commit_properties=CommitProperties(
                custom_metadata={tables.COMMIT_RUN_ID: tables.MAINTENANCE_COMMIT}))
            report[table] = {"files_removed": metrics.get("numFilesRemoved"),
                             "files_added": metrics.get("numFilesAdded")}
    return report


def vacuum(output: str, retain_days: float) -> dict[str, int]:
    """Delete files unreferenced for ``retain_days``; returns how many per table."""
    report = {}
    for table in tables.TABLES:
        delta = tables.open_table(output, table)
        if delta is not None:
            removed = delta.vacuum(retention_hours=int(retain_days * 24), dry_run=False,
                                   enforce_retention_duration=False)
            delta.create_checkpoint()
            delta.cleanup_metadata()
            report[table] = len(removed)
    return report


def legacy_table(root: str, table: str) -> pa.Table:
    """One table of the old layout, ``run_date`` from the partition names, work folders skipped."""
    uri = storage.join(root, table)
    files = [file for file in storage.list_files(uri) if file.endswith(".parquet") and "/_" not in
             "/" + storage.relative_to(uri, file)]
    if not files:
        return tables.TABLE_SCHEMAS[table].empty_table()
    filesystem, base = storage.resolve(uri)
    partitioning = pads.partitioning(pa.schema([(col.RUN_DATE, pa.string())]), flavor="hive")
    return pads.dataset([storage.resolve(file)[1] for file in files], schema=tables.TABLE_SCHEMAS[table],
                        format="parquet", filesystem=filesystem, partitioning=partitioning,
                        partition_base_dir=base).to_table()  # columns an old file lacks read as nulls


def migrate(output: str) -> dict[str, int]:
    """Convert the old layout: for each date, the rows of its latest committed run become that date's rows."""
    if tables.is_delta(output, tables.RUNS):
        raise tables.ResultsError(f"{output} already holds Delta tables; nothing to migrate")
    legacy = storage.join(output, LEGACY)
    for table in tables.TABLES:
        if storage.is_dir(storage.join(output, table)):
            storage.move_tree(storage.join(output, table), storage.join(legacy, table))
    runs = legacy_table(legacy, tables.RUNS)
    latest = {}
    for run in sorted(runs.to_pylist(), key=lambda run: (run[col.FINISHED_AT], run[col.RUN_ID])):
        latest[run[col.RUN_DATE]] = run[col.RUN_ID]
    counts = {tables.RUNS: runs.num_rows}
    for table in tables.PARTITIONED_TABLES:
        rows = legacy_table(legacy, table)
        rows = rows.filter(pc.is_in(rows[col.RUN_ID], value_set=pa.array(list(latest.values()), pa.string())))
        for run_date, run_id in sorted(latest.items()):
            chosen = rows.filter(pc.equal(rows[col.RUN_ID], run_id))
            tables.commit_table(output, table, chosen, f"{tables.MIGRATED_PREFIX}{run_id}", run_date)
        counts[table] = rows.num_rows
    if runs.num_rows:
        tables.commit_table(output, tables.RUNS, runs, "migrated", "")
    logger.info("migrated %s: %s; the old files are in %s", output, counts, legacy)
    return counts



def log_files(output: str, table: str) -> dict[int, list[str]]:
    """A table's ``_delta_log`` files (commits, checksums, checkpoints) by the version they belong to."""
    versions: dict[int, list[str]] = {}
    for uri in storage.list_files(storage.join(tables.table_uri(output, table), "_delta_log"), recursive=False):
        match = LOG_FILE.search(uri.rsplit("/", 1)[-1])
        if match:
            versions.setdefault(int(match.group(1)), []).append(uri)
    return versions


def unparsable_entries(output: str, table: str) -> list[tuple[int, str]]:
    """(version, cause) of each commit entry of the log that is not JSON lines, oldest first."""
    damaged = []
    for version, uris in sorted(log_files(output, table).items()):
        for uri in (uri for uri in uris if uri.endswith(".json")):
            try:
                lines = storage.read_text(uri).splitlines()
                for line in lines:
                    if line.strip():
                        json.loads(line)
                if not any(line.strip() for line in lines):
                    raise ValueError("it is empty")
            except (ValueError, UnicodeDecodeError, storage.StorageError) as error:
                damaged.append((version, tables.first_line(error)))
    return damaged


def files_problem(output: str, table: str, delta: DeltaTable) -> str | None:
    """What is wrong with the data files the table's loaded version names: missing, or not the size its log
    records; None when every one is there whole."""
    uri = tables.table_uri(output, table)
    sizes = tables.held_files(uri)  # one listing for both checks
    missing = tables.missing_files(delta, uri, sizes)
    if missing:
        return f"version {delta.version()} names {len(missing)} data file(s) that do not exist (first: {missing[0]})"
    actions = pa.table(delta.get_add_actions(flatten=False)).select(["path", "size_bytes"]).to_pylist()
    wrong = sorted(action["path"] for action in actions
                   if sizes.get(urllib.parse.unquote(action["path"])) != action["size_bytes"])
    if wrong:
        return (f"version {delta.version()} names {len(wrong)} data file(s) whose size is not the one its log "
                f"records (first: {wrong[0]})")
    return None


def last_good_version(output: str, table: str, below: int) -> int | None:
    """The newest version under ``below`` that loads and whose data files are all there whole (looked for among the
    ``GOOD_VERSION_SEARCH`` before it), or None."""
    for version in range(below - 1, max(-1, below - 1 - GOOD_VERSION_SEARCH), -1):
        try:
            delta = tables.open_table(output, table, version)
        except storage.StorageError:
            continue
        if delta is not None and files_problem(output, table, delta) is None:
            return version
    return None


def restore_hint(output: str, table: str, below: int) -> str:
    good = last_good_version(output, table, below)
    if good is None:
        return f"no version of the last {GOOD_VERSION_SEARCH} is whole: restore the table from a backup"
    return (f"the last good version is {good}: `python -m jobs.maintain restore --results {output} --table {table} "
            f"--version {good}`")


def table_problems(output: str, table: str) -> list[str]:
    """One sentence for each way the table is damaged: its log, its data files."""
    if not tables.is_delta(output, table):
        return []
    damaged = unparsable_entries(output, table)
    if damaged:
        version, cause = damaged[0]
        return [f"The {table} table's log entry for version {version} cannot be parsed ({cause}), so the table "
                f"cannot be read; {restore_hint(output, table, version)}."]
    try:
        delta = tables.open_table(output, table)
    except storage.StorageError as error:
        return [f"The {table} table cannot be read ({error})."]
    problem = files_problem(output, table, delta)
    if problem:
        return [f"The {table} table's {problem}; {restore_hint(output, table, delta.version())}."]
    return []


def agreement_problems(output: str) -> list[str]:
    """One sentence for each way ``predictions`` and ``series`` disagree with ``runs``: a run whose commit is
    unfinished, rows of a run that is not its date's latest complete run, a date holding another number of rows
    than its run recorded. Needs readable tables."""
    problems = [f"Run {folder.rstrip('/').rsplit('/', 1)[-1]} died while committing (its complete work waits in "
                f"{folder}); `python -m jobs.maintain recover --results {output}` commits it."
                for folder in storage.list_dirs(storage.join(output, tables.WORK))
                if storage.exists(storage.join(folder, tables.READY))]
    runs = tables.dataset(output, tables.RUNS).to_table().to_pylist()
    latest: dict[str, dict] = {}
    for run in sorted(runs, key=lambda run: (run[col.FINISHED_AT] or datetime.datetime.min.replace(
            tzinfo=datetime.timezone.utc), run[col.RUN_ID])):
        latest[run[col.RUN_DATE]] = run
    recorded = {run[col.RUN_ID] for run in runs}
    for table, count_column in ((tables.PREDICTIONS, col.ROWS_WRITTEN), (tables.SERIES, col.SERIES)):
        rows = tables.dataset(output, table).to_table(columns=[col.RUN_DATE, col.RUN_ID])
        counts = rows.group_by([col.RUN_DATE, col.RUN_ID]).aggregate([([], "count_all")]).to_pylist()
        held = {(row[col.RUN_DATE], row[col.RUN_ID]): row["count_all"] for row in counts}
        for (run_date, run_id), count in sorted(held.items()):
            if run_id not in recorded:
                problems.append(f"The {table} table holds {count} row(s) of run {run_id} for {run_date}, a run the "
                                f"runs table does not record (an unfinished commit); {rerun_hint(output, run_date)}.")
            elif latest.get(run_date, {}).get(col.RUN_ID) != run_id:
                problems.append(f"The {table} table holds {count} row(s) of run {run_id} for {run_date}, but the "
                                f"runs table records {latest[run_date][col.RUN_ID]} as that date's latest run; "
                                f"{rerun_hint(output, run_date)}.")
        for run_date, run in sorted(latest.items()):
            expected, found = run.get(count_column), held.get((run_date, run[col.RUN_ID]), 0)
            if expected is not None and expected != found:
                problems.append(f"The {table} table holds {found} row(s) of run {run[col.RUN_ID]} for {run_date} "
                                f"where the runs table records {expected}; {rerun_hint(output, run_date)}.")
    return problems


def rerun_hint(output: str, run_date: str) -> str:
    return (f"screening {run_date} again (`python -m jobs.screen ... --output {output} --run-date {run_date}`) "
            f"replaces its rows")


def verify(output: str) -> list[str]:
    """Every problem of the output's tables, one sentence each (table and cause, and the way back); none when the
    output is whole. The tables' agreement is checked only when every table reads."""
    problems = [problem for table in tables.TABLES for problem in table_problems(output, table)]
    return problems or agreement_problems(output)


def restore(output: str, table: str, version: int) -> dict:
    """Bring ``table`` back to ``version`` (see the module docstring); returns what was done."""
    if not tables.is_delta(output, table):
        raise tables.ResultsError(f"{output} has no {table} table to restore")
    entries = log_files(output, table)
    if version not in entries:
        raise tables.ResultsError(f"the {table} table has no version {version} (its log holds "
                                   f"{min(entries, default=0)} to {max(entries, default=0)})")
    if [damaged for damaged, _ in unparsable_entries(output, table) if damaged <= version]:
        raise tables.ResultsError(f"the {table} table's log is damaged at or before version {version}: restore an "
                                   f"earlier version")
    newer = [uri for number, uris in sorted(entries.items()) if number > version for uri in uris]
    try:
        latest = tables.open_table(output, table)
    except storage.StorageError:
        latest = None
    if latest is None or unparsable_entries(output, table):
        return {"table": table, "version": version, "moved_aside": move_aside(output, table, newer)}
    try:
        latest.restore(version, commit_properties=CommitProperties(
            custom_metadata={tables.COMMIT_RUN_ID: tables.MAINTENANCE_COMMIT}))
    except (DeltaError, OSError) as error:
        raise tables.ResultsError(f"the {table} table could not be restored to version {version} "
                                   f"({tables.first_line(error)})") from error
    restored = tables.open_table(output, table)
    logger.info("the %s table restored to version %d as version %d", table, version, restored.version())
    return {"table": table, "version": version, "new_version": restored.version()}


def move_aside(output: str, table: str, uris: list[str]) -> list[str]:
    """Move log files into ``<table>/_delta_log_damaged/<time>/``, and ``_last_checkpoint`` with them when it names
    a checkpoint among them (readers then find the latest checkpoint left by listing); their new URIs."""
    log = storage.join(tables.table_uri(output, table), "_delta_log")
    aside = storage.join(tables.table_uri(output, table), DAMAGED_LOG, f"{tables.utc_now():%Y%m%dT%H%M%S%fZ}")
    pointer = storage.join(log, "_last_checkpoint")
    if storage.exists(pointer):
        checkpoint = json.loads(storage.read_text(pointer)).get("version")
        if checkpoint is not None and any(LOG_FILE.search(uri) and int(LOG_FILE.search(uri).group(1)) == checkpoint
                                          for uri in uris):
            uris = [*uris, pointer]
    moved = []
    for uri in uris:
        target = storage.join(aside, uri.rsplit("/", 1)[-1])
        storage.write_bytes(target, storage.read_bytes(uri))
        storage.delete_file(uri)
        moved.append(target)
    logger.warning("the %s table's log entries after the restored version moved aside to %s", table, aside)
    return moved
