"""The questions asked of the results every morning, as SQL over ``pipeline.results.views``; each returns an Arrow table.

Every query filters on ``run_date`` first, so over a year of nightly results it reads the dates it needs.
"""

from __future__ import annotations

import dataclasses

import duckdb
import pyarrow as pa

from pipeline.sources import paths
from pipeline import schema as col
from pipeline.results import views
from pipeline.pseudonym import pseudonymize


class QueryError(ValueError):
    """A question that has no answer as asked (unknown patient, bad SQL); the message is one line."""


@dataclasses.dataclass(frozen=True)
class DateRange:
    """Inclusive ``run_date`` bounds; None: the latest date with a complete run."""

    first: str | None = None
    last: str | None = None

    def where(self, connection: duckdb.DuckDBPyConnection) -> tuple[str, list]:
        if self.first is None and self.last is None:
            latest = connection.sql(f"SELECT max({col.RUN_DATE}) FROM runs").fetchall()[0][0]
            return f"{col.RUN_DATE} = ?", [latest]
        return f"{col.RUN_DATE} BETWEEN ? AND ?", [self.first or "0000-00-00", self.last or "9999-99-99"]


@dataclasses.dataclass(frozen=True)
class FlaggedFilter:
    dates: DateRange = DateRange()
    predicted_class: str | None = None
    threshold: float | None = None  # None: the run's own flag
    modality: str | None = None
    limit: int | None = None


def flagged(connection: duckdb.DuckDBPyConnection, chosen: FlaggedFilter) -> pa.Table:
    """Flagged series, and flagged images outside any series (JPEG/PNG), most suspicious first; a series names
    the slice that drove its decision."""
    dates, parameters = chosen.dates.where(connection)
    filters, extra = [], []
    if chosen.threshold is None:
        filters.append(f"{col.FLAGGED}")
    else:
        filters.append(f"{col.TUMOR_PROBABILITY} >= ?")
        extra.append(chosen.threshold)
    if chosen.predicted_class:
        filters.append(f"{col.PREDICTED_CLASS} = ?")
        extra.append(chosen.predicted_class)
    if chosen.modality:
        filters.append(f"{col.MODALITY} = ?")
        extra.append(chosen.modality)
    condition = " AND ".join(filters)
    query = f"""
        SELECT * FROM (
            SELECT 'series' AS kind, {col.RUN_DATE}, {col.TUMOR_PROBABILITY}, {col.PREDICTED_CLASS},
                   {col.PATIENT_KEY}, {col.STUDY_KEY}, {col.SERIES_KEY}, {col.STUDY_DATE}, {col.MODALITY},
                   {col.SLICES},
                   {col.ORDERED_SOURCE_URIS}[{col.MOST_SUSPICIOUS_SLICE_INDEX} + 1] AS deciding_source_uri,
                   {col.ORDERED_FRAME_INDICES}[{col.MOST_SUSPICIOUS_SLICE_INDEX} + 1] AS deciding_frame_index,
                   {col.MOST_SUSPICIOUS_SLICE_INDEX} AS deciding_slice_index, {col.RUN_ID}
            FROM series WHERE {dates} AND {condition}
            UNION ALL
            SELECT 'image', {col.RUN_DATE}, {col.TUMOR_PROBABILITY}, {col.PREDICTED_CLASS}, {col.PATIENT_KEY},
                   {col.STUDY_KEY}, NULL, {col.STUDY_DATE}, {col.MODALITY}, 1, {col.SOURCE_URI}, {col.FRAME_INDEX},
                   NULL, {col.RUN_ID}
            FROM predictions WHERE {dates} AND {col.SERIES_KEY} IS NULL AND {col.STATUS} = '{col.STATUS_OK}'
                                  AND {condition})
        ORDER BY {col.TUMOR_PROBABILITY} DESC, kind DESC, deciding_source_uri
        {"LIMIT " + str(int(chosen.limit)) if chosen.limit else ""}"""
    return connection.sql(query, params=[*parameters, *extra, *parameters, *extra]).to_arrow_table()


def patient(connection: duckdb.DuckDBPyConnection, patient_key: str, unknown: str | None = None) -> pa.Table:
    """One patient's series over time, by study date: class and tumor probability per study, as last scored.
    ``unknown``: the error's message for a patient without results (default: one naming the key)."""
    rows = connection.sql(f"""
        SELECT {col.STUDY_DATE}, {col.STUDY_KEY}, {col.SERIES_KEY}, {col.MODALITY}, {col.SLICES},
               {col.TUMOR_PROBABILITY}, {col.PREDICTED_CLASS}, {col.FLAGGED}, {col.MODEL_VERSION},
               {col.RUN_DATE} AS scored_on
        FROM current_series WHERE {col.PATIENT_KEY} = ?
        ORDER BY {col.STUDY_DATE}, {col.STUDY_KEY}, {col.SERIES_KEY}""", params=[patient_key]).to_arrow_table()
    if rows.num_rows == 0:
        raise QueryError(unknown or f"no results for patient key {patient_key!r} (patient keys are the pseudonyms "
                                    f"in the {col.PATIENT_KEY} column)")
    return rows


def patient_by_id(connection: duckdb.DuckDBPyConnection, patient_id: str, key: bytes | None) -> pa.Table:
    """:func:`patient` for a patient ID, turned into its patient key with the pseudonym ``key`` the screening runs
    used, here, so the tables never hold the ID. The ID appears in no message."""
    if key is None:
        raise QueryError("--patient-id needs the pseudonym key the screening runs used: set PSEUDONYM_KEY or pass "
                         "--pseudonym-key-file")
    patient_key = pseudonymize(patient_id, key, "patient")
    if patient_key is None:
        raise QueryError("the patient ID given is empty")
    return patient(connection, patient_key, "no results for that patient ID under this pseudonym key (a patient "
                                            "not screened, or another key than the screening runs used)")


def file_by_reference(connection: duckdb.DuckDBPyConnection, reference: str, key: bytes | None) -> pa.Table:
    """The stored ``source_uri`` of a file the morning report names by ``reference`` (``pipeline.sources.paths``), with
    its real path (``path``: the same, unless its folder names were pseudonymised, then found by listing them)."""
    if not paths.REFERENCE.fullmatch(reference or ""):
        raise QueryError("a file reference is f- or r- and 12 hex digits, as the report shows it")
    if reference.startswith("f-") and key is None:
        raise QueryError("an f- reference needs the pseudonym key the screening runs used: set PSEUDONYM_KEY or "
                         "pass --pseudonym-key-file")
    keyed = reference.startswith("f-")
    cursor = connection.execute(f"SELECT DISTINCT {col.SOURCE_URI}{'' if keyed else ', ' + col.RUN_ID} "
                                f"FROM predictions_all WHERE {col.SOURCE_URI} IS NOT NULL")
    found = set()
    while rows := cursor.fetchmany(10_000):
        found.update(row[0] for row in rows if paths.file_reference(row[0], key if keyed else None,
                                                                     "" if keyed else row[1]) == reference)
    if not found:
        raise QueryError(f"no file in these results has reference {reference} (under this pseudonym key)")
    located = [(uri, locate(uri, key)) for uri in sorted(found)]
    return pa.table({"reference": [reference] * len(located), col.SOURCE_URI: [uri for uri, _ in located],
                     "path": [path for _, path in located]})


def locate(uri: str, key: bytes | None) -> str | None:
    """The real path of a stored ``source_uri``; None when its pseudonymised folders cannot be found."""
    if not paths.DIRECTORY_PSEUDONYM.search(uri):
        return uri
    return paths.resolve_pseudonymized(uri, key) if key is not None else None


STANDING = "standing"  # in the summary: the run whose rows its night holds


def summary(connection: duckdb.DuckDBPyConnection, dates: DateRange, by_class: bool = False) -> pa.Table:
    """Per night: the runs with their counts, errors by code, skips by rule, unfamiliar rows, throughput (the
    scoring stage's rate and time, then the whole run's time and rate, start-up included) and model; or, ``by_class``, how many images each outcome took per night (a class, ``unfamiliar``, ``skipped: <rule>``
    or ``error: <code>``). Of a night run more than once, ``standing`` marks the run whose rows the night holds
    (its latest); an earlier run's rows were replaced, its unchanged files' rows carried over (``files_carried_over``,
    ``rows_carried_over``; 0 for runs before carrying over existed)."""
    where, parameters = dates.where(connection) if dates.first or dates.last else ("TRUE", [])
    if by_class:
        return connection.sql(f"""
            SELECT {col.RUN_DATE}, CASE WHEN {col.STATUS} = '{col.STATUS_SKIPPED}' THEN 'skipped: ' || {col.SELECTION_RULE}
                                        WHEN {col.STATUS} = '{col.STATUS_ERROR}' THEN 'error: ' || {col.ERROR_CODE}
                                        WHEN {col.OOD} THEN 'unfamiliar'
                                        ELSE {col.PREDICTED_CLASS} END AS outcome,
                   count(*) AS images, count(*) FILTER (WHERE {col.FLAGGED}) AS flagged,
                   round(avg({col.TUMOR_PROBABILITY}), 4) AS mean_tumor_probability
            FROM predictions WHERE {where} GROUP BY ALL ORDER BY {col.RUN_DATE}, outcome""",
                              params=parameters).to_arrow_table()
    return connection.sql(f"""
        SELECT {col.RUN_DATE}, {col.RUN_ID},
               {col.FINISHED_AT} = max({col.FINISHED_AT}) OVER (PARTITION BY {col.RUN_DATE}) AS {STANDING},
               {col.MODE}, {col.FILES_LISTED}, {col.FILES_UNCHANGED},
               coalesce({col.FILES_CARRIED_OVER}, 0) AS {col.FILES_CARRIED_OVER}, {col.ROWS_WRITTEN},
               coalesce({col.ROWS_CARRIED_OVER}, 0) AS {col.ROWS_CARRIED_OVER}, {col.ROWS_SCORED}, {col.ROWS_FLAGGED},
               {col.ROWS_ERROR}, {col.ERRORS_BY_CODE},
               {col.ROWS_SKIPPED}, {col.SKIPPED_BY_REASON}, {col.ROWS_OOD},
               {col.SERIES}, {col.SERIES_FLAGGED},
               round({col.SCORING_IMAGES_PER_SECOND}, 1) AS {col.SCORING_IMAGES_PER_SECOND},
               round({col.SCORING_SECONDS}, 1) AS {col.SCORING_SECONDS},
               round({col.DURATION_SECONDS}, 1) AS {col.DURATION_SECONDS},
               round({col.IMAGES_PER_SECOND}, 1) AS {col.IMAGES_PER_SECOND}, {col.MODEL_VERSION}, {col.THRESHOLD}
        FROM runs WHERE {where} ORDER BY {col.RUN_DATE}, {col.FINISHED_AT}""", params=parameters).to_arrow_table()


def sql(connection: duckdb.DuckDBPyConnection, query: str) -> pa.Table:
    """Any SQL over the views that only reads (``views.check_read_only``); DuckDB's own message, on one line, when
    it fails."""
    try:
        views.check_read_only(connection, query)
        relation = connection.sql(query)
        return relation.to_arrow_table() if relation is not None else pa.table({})
    except views.WritingStatementError as error:
        raise QueryError(str(error)) from error
    except duckdb.Error as error:
        raise QueryError(" ".join(str(error).split())) from error


# --by of the reviews query -> (the SQL expression grouped on, its column name)
REVIEW_GROUPS = {"all": ("'all'", "cases"), "class": (col.PREDICTED_CLASS, col.PREDICTED_CLASS),
                 "date": (col.RUN_DATE, col.RUN_DATE), "reviewer": ("reviewer", "reviewer")}


def reviews(connection: duckdb.DuckDBPyConnection, verdicts, dates: DateRange, by: str = "all") -> pa.Table:
    """How far the reviewers agree with the model (``verdicts``: the ``reviews`` table, ``pipeline.review``): each
    reviewed case once, by its latest verdict (a reopened case is not counted), grouped ``by`` all, the model's class,
    the run date or the reviewer: cases reviewed, flags confirmed, dismissed and left unsure, the share confirmed
    of those decided, and of the confirmed how many kept the model's class or were given another. No dates: every
    date."""
    if by not in REVIEW_GROUPS:
        raise QueryError(f"reviews are grouped by {', '.join(REVIEW_GROUPS)}, not {by!r}")
    connection.register("reviews_all", verdicts)
    where, parameters = dates.where(connection) if dates.first or dates.last else ("TRUE", [])
    group, name = REVIEW_GROUPS[by]
    return connection.sql(f"""
        WITH latest AS (
            SELECT * FROM reviews_all WHERE {where}
            QUALIFY row_number() OVER (PARTITION BY {col.RUN_ID}, case_key ORDER BY reviewed_at DESC) = 1)
        SELECT {group} AS {name},
               count(*) AS cases_reviewed,
               count(*) FILTER (WHERE verdict = 'confirmed') AS confirmed,
               count(*) FILTER (WHERE verdict = 'dismissed') AS dismissed,
               count(*) FILTER (WHERE verdict = 'unsure') AS unsure,
               round(count(*) FILTER (WHERE verdict = 'confirmed')
                     / nullif(count(*) FILTER (WHERE verdict IN ('confirmed', 'dismissed')), 0), 3)
                   AS share_confirmed,
               count(*) FILTER (WHERE verdict = 'confirmed' AND coalesce(corrected_class, {col.PREDICTED_CLASS})
                                      = {col.PREDICTED_CLASS}) AS class_kept,
               count(*) FILTER (WHERE verdict = 'confirmed' AND corrected_class <> {col.PREDICTED_CLASS})
                   AS class_corrected
        FROM latest WHERE verdict <> 'reopened' GROUP BY ALL ORDER BY 1""", params=parameters).to_arrow_table()
