"""Which listed files a run scores: new and changed ones by default, the date's standing rows carried over
(stage 2 of ``pipeline.screening.run``)."""

from __future__ import annotations

import dataclasses
import re
from typing import Iterator

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline.results import tables, views
from pipeline import schema as col
from pipeline.sources.listing import LISTING_SCHEMA
from pipeline.screening.config import ScreenConfig
from pipeline.screening.summary import SERIES_BATCH_ROWS



VERDICT = "verdict"  # a listed file's verdict in a run's selection

NEW_OR_CHANGED, OTHER_MODEL, UNCHANGED = "new_or_changed", "other_model", "unchanged"

CARRIED_OVER = "carried_over"  # scored by the date's standing run, unchanged, with this run's model: rows copied

STANDING_URI = "standing_uri"  # in the verdicts: the source_uri the date's standing rows store for the file


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which listed files this run scores. ``verdicts``: a Parquet file holding each listed file once, with its
    verdict; ``chosen``: the verdicts scored; ``listed``: distinct files listed; ``files``: files to score;
    ``unchanged``: listed files left as scored before; ``other_model``: unchanged files whose rows come from another
    model than this run's; ``carried_over``: files whose rows the date's standing run holds, copied into this run."""

    verdicts: str
    chosen: tuple[str, ...]
    mode: str
    listed: int
    files: int
    unchanged: int = 0
    other_model: int = 0
    carried_over: int = 0

    def blocks(self, rows: int) -> Iterator[pa.Table]:
        """The chosen files (``LISTING_SCHEMA``), ``rows`` at a time, read from the verdicts as they are needed."""
        scanner = pads.dataset(self.verdicts, format="parquet").scanner(
            columns=LISTING_SCHEMA.names, filter=pc.field(VERDICT).isin(list(self.chosen)), batch_size=rows)
        waiting, count = [], 0
        for batch in scanner.to_batches():
            waiting.append(batch)
            count += batch.num_rows
            while count >= rows:
                table = pa.Table.from_batches(waiting, LISTING_SCHEMA)
                yield table.slice(0, rows)
                waiting, count = table.slice(rows).to_batches(), count - rows
        if count:
            yield pa.Table.from_batches(waiting, LISTING_SCHEMA)


def select_files(config: ScreenConfig, connection: duckdb.DuckDBPyConnection, listing: str, known: str,
                 model_sha256: str, verdicts: str, stored_uri: str = "{}", standing: str | None = None) -> Selection:
    """Incremental by default: a file is scored when no complete run of another date scored it, when its size or
    modification time differ from what was scored, or when an error that says nothing about the file hit it. A
    file the run's date already holds rows of (``standing``: SQL as ``known`` for the date's standing run, see
    ``views.standing_files``), with the same size and time, no such error, and this model's sha256, is carried
    over instead: its rows are copied, not scored again.

    ``listing`` is a relation of listed files (``LISTING_SCHEMA``, a file may come twice) and ``known`` SQL for
    what the tables know (``views.scored_files``); the verdicts are written to the Parquet file ``verdicts`` by
    one query, so memory holds neither list. ``stored_uri``: SQL turning a listed URI (``{}``) into the
    ``source_uri`` the tables store for it."""
    if not re.fullmatch(r"[0-9a-f]{64}", model_sha256):
        raise ValueError(f"not a sha256: {model_sha256!r}")
    size, modified, uri = col.SOURCE_SIZE, col.SOURCE_MODIFIED, col.SOURCE_URI
    listed = (f"SELECT {uri}, any_value({size}) AS {size}, any_value({modified}) AS {modified} FROM {listing} "
              f"GROUP BY {uri}")
    verdict, joins, carried, standing_uri = f"'{NEW_OR_CHANGED}'", "", "", "NULL"
    if not config.full:
        listed = f"SELECT *, {stored_uri.format(uri)} AS stored FROM ({listed})"
        joins = f"LEFT JOIN ({known}) k ON k.{uri} = l.stored"
        if standing:
            joins += f" LEFT JOIN ({standing}) s ON s.{uri} = l.stored"
            carried = f"""WHEN NOT s.retry AND s.{size} = l.{size} AND s.modified_us = l.{modified}
                 AND s.{col.MODEL_SHA256} = '{model_sha256}' THEN '{CARRIED_OVER}'"""
            standing_uri = f"s.{uri}"
        verdict = f"""CASE
            WHEN l.{size} < 0 OR l.{modified} < 0 THEN '{NEW_OR_CHANGED}'
            {carried}
            WHEN k.{uri} IS NULL OR k.retry OR k.{size} IS DISTINCT FROM l.{size}
                 OR k.modified_us IS DISTINCT FROM l.{modified} THEN '{NEW_OR_CHANGED}'
            WHEN k.{col.MODEL_SHA256} IS DISTINCT FROM '{model_sha256}' THEN '{OTHER_MODEL}'
            ELSE '{UNCHANGED}' END"""
    connection.execute(f"""COPY (
        SELECT l.{uri}, l.{size}, l.{modified}, {verdict} AS {VERDICT},
               CAST({standing_uri} AS VARCHAR) AS {STANDING_URI} FROM ({listed}) l {joins}) TO '{verdicts}' (FORMAT parquet)""")
    counts = dict(connection.execute(
        f"SELECT {VERDICT}, count(*) FROM read_parquet('{verdicts}') GROUP BY ALL").fetchall())
    other_model = counts.get(OTHER_MODEL, 0)
    chosen = (NEW_OR_CHANGED, OTHER_MODEL) if config.rescore_on_model_change else (NEW_OR_CHANGED,)
    return Selection(verdicts, chosen, "full" if config.full else "incremental", listed=sum(counts.values()),
                     files=sum(counts.get(name, 0) for name in chosen),
                     unchanged=counts.get(UNCHANGED, 0) + (0 if config.rescore_on_model_change else other_model),
                     other_model=other_model, carried_over=counts.get(CARRIED_OVER, 0))


def carry_over(connection: duckdb.DuckDBPyConnection, selection: Selection, uri: str, run_id: str,
               run_date: str) -> int:
    """The rows the date's standing run holds for the files carried over, staged under ``uri`` (beside the run's
    scored predictions) as this run's rows: its run id, their own ``scored_at``, everything else as it stands.
    Returns the rows copied; memory holds a batch of them."""
    rows = connection.sql(f"""
        SELECT * REPLACE ('{run_id}' AS {col.RUN_ID}) FROM {tables.PREDICTIONS}
        WHERE {col.RUN_DATE} = '{views.checked_date(run_date)}' AND {col.SOURCE_URI} IN (
            SELECT {STANDING_URI} FROM read_parquet('{selection.verdicts}') WHERE {VERDICT} = '{CARRIED_OVER}')
        """).to_arrow_reader(SERIES_BATCH_ROWS)
    parts, copied = tables.ParquetParts(uri, col.PREDICTIONS_SCHEMA, name=CARRIED_OVER), 0
    for batch in rows:
        parts.write(pa.Table.from_batches([batch]).select(col.PREDICTIONS_SCHEMA.names).cast(col.PREDICTIONS_SCHEMA))
        copied += batch.num_rows
    parts.close()
    return copied
