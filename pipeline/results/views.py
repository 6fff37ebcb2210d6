"""SQL over the results tables: a DuckDB connection with the tables and the views users and the nightly run need.

Views, all restricted to complete runs (runs recorded in ``runs``, see ``pipeline.results.tables``):
- ``predictions``, ``series``, ``runs``: the tables' rows. ``predictions`` and ``series`` are read as of each
  table's last commit not made by a run still between its commits (``tables.table_datasets``): a run killed after
  its predictions commit has replaced its date's rows in the table's latest version, and until its ``runs`` row
  lands the views show the earlier complete night of that date, predictions, series and flags alike.
- ``current_predictions``: for each file, the rows of the latest run that scored it, whatever night that was.
- ``current_series``: for each series, the row of the latest run that summarised it.
- ``current_studies``: one row per study, from its current series (``current_series_by_study``). A study's tumor
  probability is the highest of its series', and it is flagged when any of its series is (a tumor in one series is a
  tumor in the study; each series' own rule, in ``pipeline.scoring.series``, already keeps one noisy slice from flagging).
  The deciding series is the flagged series with the highest tumor probability, or, when none is flagged, the
  series with the highest (the first series key on ties); the study's class is that series' class. A study whose
  series have no probability (every slice skipped, failed or unfamiliar) has none and no flag.
- ``predictions_all``, ``series_all``: every row of the tables' latest versions, a run's partial commit included
  (for audits); ``predictions_settled`` and ``series_settled``: the versions the views read.
The tables are read through pyarrow datasets registered in DuckDB (no DuckDB extension is downloaded), so column
selection and filters such as ``run_date = '2026-11-02'`` push down to the Parquet files: a one-day question over
a year of results reads one day. ``as_of`` reads every table as it was at that time (Delta time travel).

``connect_read_only`` is the connection users' SQL runs on (``jobs.query``): once the tables are registered, DuckDB
may touch no file, load or install no extension, and no setting can be changed back (``LOCKDOWN``); and
``check_read_only`` lets through only statements that read (``SELECT`` in its forms, ``EXPLAIN`` of one).
"""

from __future__ import annotations

import datetime
import re

import duckdb

from pipeline.results import tables
from pipeline import schema as col

def latest_per_file(condition: str = "TRUE") -> str:
    """SQL: for each file, the rows of the latest complete run that scored it among the rows meeting
    ``condition``."""
    return f"""
        SELECT p.* FROM predictions p JOIN runs_all r ON p.{col.RUN_ID} = r.{col.RUN_ID}
        WHERE {condition}
        QUALIFY r.{col.FINISHED_AT} = max(r.{col.FINISHED_AT}) OVER (PARTITION BY p.{col.SOURCE_URI})"""


def current_series_by_study() -> str:
    """SQL: one row per study key of ``current_series`` (see the module docstring for the rule)."""
    deciding = (f"ORDER BY {col.FLAGGED} DESC NULLS LAST, {col.TUMOR_PROBABILITY} DESC, {col.SERIES_KEY}) "
                f"FILTER (WHERE {col.TUMOR_PROBABILITY} IS NOT NULL)")
    return f"""
        SELECT {col.STUDY_KEY}, min({col.PATIENT_KEY}) AS {col.PATIENT_KEY}, min({col.STUDY_DATE}) AS {col.STUDY_DATE},
               count(*) AS {col.SERIES}, count(*) FILTER (WHERE {col.FLAGGED}) AS {col.SERIES_FLAGGED},
               max({col.TUMOR_PROBABILITY}) AS {col.TUMOR_PROBABILITY}, bool_or({col.FLAGGED}) AS {col.FLAGGED},
               first({col.SERIES_KEY} {deciding} AS deciding_{col.SERIES_KEY},
               first({col.PREDICTED_CLASS} {deciding} AS {col.PREDICTED_CLASS}
        FROM current_series WHERE {col.STUDY_KEY} IS NOT NULL GROUP BY {col.STUDY_KEY}"""


VIEWS = {
    tables.RUNS: "SELECT * FROM runs_all",
    tables.PREDICTIONS: f"SELECT * FROM predictions_settled WHERE {col.RUN_ID} IN (SELECT {col.RUN_ID} FROM runs_all)",
    tables.SERIES: f"SELECT * FROM series_settled WHERE {col.RUN_ID} IN (SELECT {col.RUN_ID} FROM runs_all)",
    "current_predictions": latest_per_file(),
    "current_series": f"""
        SELECT s.* FROM series s JOIN runs_all r ON s.{col.RUN_ID} = r.{col.RUN_ID}
        QUALIFY row_number() OVER (PARTITION BY s.{col.SERIES_KEY} ORDER BY r.{col.FINISHED_AT} DESC) = 1""",
    "current_studies": current_series_by_study(),
}


def iso_study_date(source: str) -> str:
    """SQL: the rows of ``source`` with ``study_date`` written YYYY-MM-DD (stored as DICOM writes it, YYYYMMDD);
    a value of another form, from an older table, as stored."""
    date = col.STUDY_DATE
    return f"""SELECT * REPLACE (CASE WHEN regexp_full_match({date}, '[0-9]{{8}}')
        THEN substr({date}, 1, 4) || '-' || substr({date}, 5, 2) || '-' || substr({date}, 7, 2) ELSE {date} END
        AS {date}) FROM {source}"""


def connect(output: str, as_of: datetime.datetime | None = None,
            iso_dates: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection over the output's tables (as they were at ``as_of``, if given); with
    ``iso_dates`` every view shows ``study_date`` as YYYY-MM-DD (``iso_study_date``), as the report does."""
    tables.check_layout(output)
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    runs = tables.dataset(output, tables.RUNS, as_of)
    connection.register(f"{tables.RUNS}_all", runs)
    complete = tables.complete_runs(runs)
    for table in tables.PARTITIONED_TABLES:
        latest, settled = tables.table_datasets(output, table, complete, as_of)
        for name, data in ((f"{table}_all", latest), (f"{table}_settled", settled)):
            connection.register(f"{name}_stored" if iso_dates else name, data)
            if iso_dates:
                connection.execute(f"CREATE VIEW {name} AS {iso_study_date(name + '_stored')}")
    for name, query in VIEWS.items():
        connection.execute(f"CREATE VIEW {name} AS {query}")
    return connection


# After the tables are registered (pyarrow reads them, not DuckDB): no file, no extension, no Python variable
# scanned by name, and the configuration locked last so no statement can undo the rest.
LOCKDOWN = ("SET python_enable_replacements = false", "SET enable_external_access = false",
            "SET autoload_known_extensions = false", "SET autoinstall_known_extensions = false",
            "SET allow_community_extensions = false", "SET lock_configuration = true")
READING_STATEMENTS = {duckdb.StatementType.SELECT}
EXPLAIN = re.compile(r"\s*EXPLAIN(\s+ANALY[SZ]E)?\b", re.IGNORECASE)


class WritingStatementError(ValueError):
    """SQL that would do more than read the results tables; the message is one sentence."""


def connect_read_only(output: str, as_of: datetime.datetime | None = None) -> duckdb.DuckDBPyConnection:
    """:func:`connect` (``study_date`` written YYYY-MM-DD), then locked down: the connection reads the results
    tables and nothing else."""
    connection = connect(output, as_of, iso_dates=True)
    for setting in LOCKDOWN:
        connection.execute(setting)
    return connection


def check_read_only(connection: duckdb.DuckDBPyConnection, query: str) -> None:
    """Raise ``WritingStatementError`` unless every statement of ``query`` only reads."""
    for statement in connection.extract_statements(query):
        kind = statement_kind(statement)
        if kind == duckdb.StatementType.EXPLAIN:  # EXPLAIN ANALYZE runs what it explains: that must read too
            explained = EXPLAIN.match(statement.query)
            inner = connection.extract_statements(statement.query[explained.end():]) if explained else []
            kind = statement_kind(inner[0]) if len(inner) == 1 else None
        if kind not in READING_STATEMENTS:
            raise WritingStatementError(
                f"only statements that read are run (SELECT, FROM, WITH, DESCRIBE, SUMMARIZE, EXPLAIN of one), not "
                f"{f'{kind.name} statements' if kind else 'this statement'}: the query tool writes no file, attaches "
                f"no database and installs or loads no extension")


def statement_kind(statement) -> duckdb.StatementType | None:
    """The statement's type; None for one DuckDB's Python API cannot name (e.g. UPDATE EXTENSIONS)."""
    try:
        return statement.type
    except ValueError:
        return None


def checked_date(date: str) -> str:
    """A validated YYYY-MM-DD date, safe to inline in SQL."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise ValueError(f"not a date: {date!r}")
    return date


def latest_before(excluding_date: str) -> str:
    """SQL: for each file, the rows of the latest complete run that scored it on a date other than
    ``excluding_date`` (the date a run replaces)."""
    return latest_per_file(f"p.{col.RUN_DATE} <> '{checked_date(excluding_date)}'")


def file_facts(rows: str) -> str:
    """SQL: one row per file of the prediction rows ``rows``, with what they record of it: the size
    (``source_size``) and modification time in microseconds (``modified_us``) it had when scored, the model that
    scored it (``model_sha256``), and whether an error that says nothing about the file (``RETRIED_ERROR_CODES``)
    hit it (``retry``)."""
    retried = ", ".join(f"'{code.value}'" for code in col.RETRIED_ERROR_CODES)
    return f"""
        SELECT {col.SOURCE_URI}, any_value({col.SOURCE_SIZE}) AS {col.SOURCE_SIZE},
               any_value(epoch_us({col.SOURCE_MODIFIED})) AS modified_us,
               any_value({col.MODEL_SHA256}) AS {col.MODEL_SHA256},
               coalesce(bool_or({col.ERROR_CODE} IN ({retried})), false) AS retry
        FROM ({rows}) GROUP BY {col.SOURCE_URI}"""


def scored_files(excluding_date: str) -> str:
    """SQL: ``file_facts`` of every file a complete run of another date than ``excluding_date`` scored, from the
    latest such run."""
    return file_facts(latest_before(excluding_date))


def standing_files(run_date: str) -> str:
    """SQL: ``file_facts`` of every file whose rows ``run_date`` holds: the rows of the date's standing run (its
    latest complete run, read as of the settled versions like every view)."""
    return file_facts(f"SELECT * FROM {tables.PREDICTIONS} WHERE {col.RUN_DATE} = '{checked_date(run_date)}'")
