"""Keeping a results output fast and tidy over years of nightly runs, and bringing older outputs forward.

- ``compact``: rewrite each table's small files (one or a few per night) into large ones, one commit per table;
  readers see the same rows before and after.
- ``vacuum``: delete data files no table version newer than the retention period needs. Time travel reaches back
  as far as the retention period, no further.
- ``migrate``: convert an output written by the Parquet layout before Delta tables (files under
  ``<table>/run_date=<date>/``, the latest committed run per date in ``runs``) into Delta tables, once; the old
  files are kept under ``_parquet_layout/`` until the user deletes them.
Every operation here holds the output's lock, like a screening run.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import CommitProperties

from infra import storage
from pipeline import results
from pipeline import schema as col

logger = logging.getLogger(__name__)

LEGACY = "_parquet_layout"


def compact(output: str) -> dict[str, dict]:
    """Bin-pack each table's files; returns the metrics delta-rs reports per table."""
    report = {}
    for table in results.TABLES:
        delta = results.open_table(output, table)
        if delta is not None:
            metrics = delta.optimize.compact(commit_properties=CommitProperties(
                custom_metadata={results.COMMIT_RUN_ID: "maintenance"}))
            report[table] = {"files_removed": metrics.get("numFilesRemoved"),
                             "files_added": metrics.get("numFilesAdded")}
    return report


def vacuum(output: str, retain_days: float) -> dict[str, int]:
    """Delete files unreferenced for ``retain_days``; returns how many per table."""
    report = {}
    for table in results.TABLES:
        delta = results.open_table(output, table)
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
             file[len(uri):]]
    if not files:
        return results.TABLE_SCHEMAS[table].empty_table()
    filesystem, base = storage.resolve(uri)
    partitioning = pads.partitioning(pa.schema([(col.RUN_DATE, pa.string())]), flavor="hive")
    return pads.dataset([storage.resolve(file)[1] for file in files], schema=results.TABLE_SCHEMAS[table],
                        format="parquet", filesystem=filesystem, partitioning=partitioning,
                        partition_base_dir=base).to_table()  # columns an old file lacks read as nulls


def migrate(output: str) -> dict[str, int]:
    """Convert the old layout: for each date, the rows of its latest committed run become that date's rows."""
    if results.is_delta(output, results.RUNS):
        raise results.ResultsError(f"{output} already holds Delta tables; nothing to migrate")
    legacy = storage.join(output, LEGACY)
    for table in results.TABLES:
        if storage.is_dir(storage.join(output, table)):
            storage.move_tree(storage.join(output, table), storage.join(legacy, table))
    runs = legacy_table(legacy, results.RUNS)
    latest = {}
    for run in sorted(runs.to_pylist(), key=lambda run: (run[col.FINISHED_AT], run[col.RUN_ID])):
        latest[run[col.RUN_DATE]] = run[col.RUN_ID]
    counts = {results.RUNS: runs.num_rows}
    for table in results.PARTITIONED_TABLES:
        rows = legacy_table(legacy, table)
        rows = rows.filter(pc.is_in(rows[col.RUN_ID], value_set=pa.array(list(latest.values()), pa.string())))
        for run_date, run_id in sorted(latest.items()):
            chosen = rows.filter(pc.equal(rows[col.RUN_ID], run_id))
            results.commit_table(output, table, chosen, f"migrated-{run_id}", run_date)
        counts[table] = rows.num_rows
    if runs.num_rows:
        results.commit_table(output, results.RUNS, runs, "migrated", "")
    logger.info("migrated %s: %s; the old files are in %s", output, counts, legacy)
    return counts

