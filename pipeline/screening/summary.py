"""Stage 6: the run's staged rows queried with DuckDB in bounded memory: every series it touched summarised
whole, and its outcomes counted for the ``runs`` row."""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Iterator

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.results import tables, views
from pipeline import schema as col
from pipeline.scoring.series import SERIES_INPUT_COLUMNS, series_table, summarize_series



STAGED = "staged"  # the run's staged predictions, as DuckDB sees them while stage 6 queries them

# what stage 6 reads of the staged predictions, once, into a DuckDB table
STAGED_COLUMNS = [*SERIES_INPUT_COLUMNS, col.ERROR_CODE, col.FLAGGED, col.SELECTION_RULE]

# DuckDB's memory in the driver: its sorts, joins and tables spill to the run's local workspace beyond this, so the
# selection and the series step hold the same memory for a thousand files or a million (docs/benchmarks.md)
DUCKDB_MEMORY = "256MB"


def run_connection(output: str, workspace: str) -> duckdb.DuckDBPyConnection:
    """The results views of ``output`` (``pipeline.results.views``) on a DuckDB bounded to ``DUCKDB_MEMORY``, spilling to
    ``workspace``."""
    connection = views.connect(output)
    connection.execute(f"SET memory_limit = '{DUCKDB_MEMORY}'")
    connection.execute(f"SET temp_directory = '{os.path.join(workspace, 'duckdb')}'")
    connection.execute("SET preserve_insertion_order = false")
    return connection


def series_frames_query(run_date: str) -> str:
    """SQL: the frames of every series this run touched, in series order: its own rows (``staged``), and the latest
    earlier rows of the same series' other files (a series whose slices arrive over two nights is summarised
    whole)."""
    columns = ", ".join(SERIES_INPUT_COLUMNS)
    return f"""
        SELECT {columns} FROM {STAGED} WHERE {col.SERIES_KEY} IS NOT NULL
        UNION ALL
        SELECT {columns} FROM ({views.latest_before(run_date)})
        WHERE {col.SERIES_KEY} IN (SELECT {col.SERIES_KEY} FROM {STAGED} WHERE {col.SERIES_KEY} IS NOT NULL)
          AND {col.SOURCE_URI} NOT IN (SELECT {col.SOURCE_URI} FROM {STAGED})
        ORDER BY {col.SERIES_KEY}"""


def whole_series(batches: Iterable[pa.RecordBatch]) -> Iterator[pd.DataFrame]:
    """Frames ordered by series key, in batches -> frames holding whole series: the rows of the last series of a
    batch wait for the next batch, which may hold more of them."""
    waiting = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        frame = batch.to_pandas()
        if waiting is not None:
            frame = pd.concat([waiting, frame], ignore_index=True)
        last = frame[col.SERIES_KEY].to_numpy() == frame[col.SERIES_KEY].iloc[-1]
        waiting = frame[last]
        if not last.all():
            yield frame[~last]
    if waiting is not None:
        yield waiting


def write_series(frames: Iterable[pa.RecordBatch], uri: str, run_id: str, run_date: str,
                 threshold: float) -> tuple[int, int]:
    """Stage 6: summarise the series of ``frames`` (record batches ordered by series key) into Parquet under
    ``uri``, stamped with this run; returns (series, flagged series). Memory holds a batch and a series, not the
    run's frames."""
    parts, series, flagged = tables.ParquetParts(uri, col.SERIES_SCHEMA), 0, 0
    for frame in whole_series(frames):
        grouped = frame.groupby(col.SERIES_KEY, sort=True, group_keys=False)
        summaries = pd.concat([summarize_series(rows, threshold, run_date) for _, rows in grouped],
                              ignore_index=True)
        table = series_table(summaries)
        table = table.set_column(table.schema.get_field_index(col.RUN_ID), col.RUN_ID,
                                 pa.array([run_id] * table.num_rows, pa.string()))
        parts.write(table)
        series += table.num_rows
        flagged += int(pc.sum(pc.fill_null(table[col.FLAGGED], False)).as_py() or 0)
    parts.close()
    return series, flagged



SERIES_BATCH_ROWS = 20_000  # frames a batch of the series query holds


@dataclasses.dataclass(frozen=True)
class Outcomes:
    """What the staged predictions of one run hold: rows by status, flags, unfamiliar inputs, and the reasons."""

    rows: int
    scored: int
    errors: int
    skipped: int
    flagged: int
    ood: int
    errors_by_code: dict
    skipped_by_reason: dict


def count_outcomes(connection: duckdb.DuckDBPyConnection) -> Outcomes:
    """The counts of the staged predictions (``staged``), for the ``runs`` row: aggregates, not the rows."""
    status = col.STATUS
    rows, scored, errors, skipped, flagged, ood = connection.execute(f"""
        SELECT count(*), count(*) FILTER ({status} = '{col.STATUS_OK}'),
               count(*) FILTER ({status} = '{col.STATUS_ERROR}'), count(*) FILTER ({status} = '{col.STATUS_SKIPPED}'),
               count(*) FILTER ({col.FLAGGED}), count(*) FILTER ({col.OOD}) FROM {STAGED}""").fetchone()
    errors_by_code = connection.execute(f"""
        SELECT {col.ERROR_CODE}, count(*) FROM {STAGED} WHERE {col.ERROR_CODE} IS NOT NULL
        GROUP BY ALL ORDER BY 1""").fetchall()
    skipped_by_reason = connection.execute(f"""
        SELECT coalesce({col.SELECTION_RULE}, 'unknown'), count(*) FROM {STAGED}
        WHERE {status} = '{col.STATUS_SKIPPED}' GROUP BY ALL ORDER BY 1""").fetchall()
    return Outcomes(rows, scored, errors, skipped, flagged, ood, dict(errors_by_code), dict(skipped_by_reason))


def summarise(connection: duckdb.DuckDBPyConnection, output: str, run_id: str, run_date: str,
              threshold: float) -> tuple[tuple[int, int], Outcomes]:
    """Stage 6 over the run's staged predictions: its series written beside them, and its outcomes counted;
    returns ((series, flagged series), outcomes)."""
    staged_uri = tables.work_uri(output, run_id, tables.PREDICTIONS)
    connection.register("staged_rows", tables.staged_batches(staged_uri, col.PREDICTIONS_SCHEMA, STAGED_COLUMNS))
    connection.execute(f"CREATE TEMP TABLE {STAGED} AS SELECT * FROM staged_rows")  # read once, queried twice
    connection.unregister("staged_rows")
    frames = connection.sql(series_frames_query(run_date)).to_arrow_reader(SERIES_BATCH_ROWS)
    series = write_series(frames, tables.work_uri(output, run_id, tables.SERIES), run_id, run_date, threshold)
    outcomes = count_outcomes(connection)
    connection.execute(f"DROP TABLE {STAGED}")  # its memory goes back before the commit
    return series, outcomes
