"""The morning report: one committed run in, one self-contained HTML file out (images embedded as data URIs, inline
SVG charts, no script, no font or request from anywhere), for the radiologist who reads the night's results. This
module decides what it shows: the run's rows from the committed tables (``pipeline.views``), the flagged series and
the flagged images outside any series, most suspicious first, and the unfamiliar (out-of-distribution) inputs, least
familiar first; the first ``MAX_CASES_WITH_IMAGES`` of each list get pictures (``pipeline.report_images``), the rest
a line each. The page is written by ``pipeline.report_html`` (skeleton, summary), ``pipeline.report_charts`` and
``pipeline.report_cases``; only the tables' pseudonymous keys, study dates and modalities describe a patient, and
every text is escaped. After a run commits, ``publish_run_report`` writes ``<output>/reports/<run_date>/<run_id>.html``,
from a Ray task when there are heat maps to draw (TensorFlow then loads in a worker, never in the driver);
``python -m jobs.query report`` rebuilds any committed run's report.
"""

from __future__ import annotations

import logging

import ray

from infra import storage
from infra.ray_runtime import ensure_ray
from model.labels import CLASS_NAMES
from model.preprocessing import PreprocessConfig
from pipeline import report_cases, views
from pipeline import schema as col
from pipeline.report_cases import unfamiliar_section
from pipeline.report_charts import BINS, charts_section
from pipeline.report_html import banner, footer, page, summary_section, title
from pipeline.report_images import Case, draw_pictures, run_model, unfamiliar_thumbnails

logger = logging.getLogger(__name__)

REPORTS = "reports"
MAX_CASES_WITH_IMAGES = 50  # per list (series, images, unfamiliar inputs); the rest are listed without pictures


class ReportError(ValueError):
    """A report that cannot be built as asked (no such run); the message is one line."""


# --- what the tables say ---------------------------------------------------------------------------------------


def records(connection, query: str, parameters: list) -> list[dict]:
    cursor = connection.execute(query, parameters)
    names = [description[0] for description in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def latest_run_id(connection) -> str:
    rows = records(connection, f"SELECT {col.RUN_ID} FROM runs ORDER BY {col.FINISHED_AT} DESC LIMIT 1", [])
    if not rows:
        raise ReportError("the results hold no committed run yet")
    return rows[0][col.RUN_ID]


def run_row(connection, run_id: str) -> dict:
    rows = records(connection, f"SELECT * FROM runs WHERE {col.RUN_ID} = ?", [run_id])
    if not rows:
        raise ReportError(f"no committed run {run_id!r} in these results (`python -m jobs.query summary` lists them)")
    return rows[0]


def of_run(run: dict) -> tuple[str, list]:
    """SQL condition and parameters for the rows of ``run`` (its date first, so only its partition is read)."""
    return f"{col.RUN_DATE} = ? AND {col.RUN_ID} = ?", [run[col.RUN_DATE], run[col.RUN_ID]]


def flagged_series(connection, run: dict) -> list[dict]:
    """The run's flagged series, most suspicious first, each with its deciding slice's class probabilities from
    the latest complete run (up to this one) that scored that slice."""
    where, parameters = of_run(run)
    probabilities = ", ".join(f"p.{name}" for name in col.PROBABILITY_COLUMNS)
    return records(connection, f"""
        WITH flagged AS (
            SELECT *, {col.ORDERED_SOURCE_URIS}[{col.MOST_SUSPICIOUS_SLICE_INDEX} + 1] AS deciding_uri,
                   {col.ORDERED_FRAME_INDICES}[{col.MOST_SUSPICIOUS_SLICE_INDEX} + 1] AS deciding_frame
            FROM series WHERE {where} AND {col.FLAGGED}),
        scored AS (
            SELECT p.*, r.{col.FINISHED_AT} AS scored_by_run_at FROM predictions p
            JOIN runs r ON p.{col.RUN_ID} = r.{col.RUN_ID}
            WHERE p.{col.SOURCE_URI} IN (SELECT deciding_uri FROM flagged) AND r.{col.FINISHED_AT} <= ?)
        SELECT f.*, {probabilities} FROM flagged f
        LEFT JOIN scored p ON p.{col.SOURCE_URI} = f.deciding_uri AND p.{col.FRAME_INDEX} = f.deciding_frame
        QUALIFY row_number() OVER (PARTITION BY f.{col.SERIES_KEY} ORDER BY p.scored_by_run_at DESC NULLS LAST) = 1
        ORDER BY f.{col.TUMOR_PROBABILITY} DESC, f.{col.SERIES_KEY}""", [*parameters, run[col.FINISHED_AT]])


def flagged_images(connection, run: dict) -> list[dict]:
    """The run's flagged images outside any series (JPEG, PNG), most suspicious first."""
    where, parameters = of_run(run)
    return records(connection, f"""
        SELECT * FROM predictions WHERE {where} AND {col.SERIES_KEY} IS NULL AND {col.STATUS} = '{col.STATUS_OK}'
                                    AND {col.FLAGGED}
        ORDER BY {col.TUMOR_PROBABILITY} DESC, {col.SOURCE_URI}, {col.FRAME_INDEX}""", parameters)


def class_counts(connection, run: dict) -> dict[str, int]:
    """Scored images per predicted class, unfamiliar inputs apart (they are counted as neither)."""
    where, parameters = of_run(run)
    rows = connection.execute(f"""
        SELECT {col.PREDICTED_CLASS}, count(*) FROM predictions
        WHERE {where} AND {col.STATUS} = '{col.STATUS_OK}' AND NOT coalesce({col.OOD}, false)
              AND {col.PREDICTED_CLASS} IS NOT NULL GROUP BY 1""", parameters).fetchall()
    return {name: dict(rows).get(name, 0) for name in CLASS_NAMES}


def probability_bins(connection, run: dict) -> list[int]:
    """How many scored images (unfamiliar ones apart) fall in each of ``BINS`` tumor-probability bins."""
    where, parameters = of_run(run)
    rows = dict(connection.execute(f"""
        SELECT least(CAST(floor({col.TUMOR_PROBABILITY} * {BINS}) AS INTEGER), {BINS - 1}), count(*)
        FROM predictions WHERE {where} AND {col.STATUS} = '{col.STATUS_OK}' AND NOT coalesce({col.OOD}, false)
                               AND {col.TUMOR_PROBABILITY} IS NOT NULL GROUP BY 1""", parameters).fetchall())
    return [rows.get(index, 0) for index in range(BINS)]


def skip_reasons(connection, run: dict) -> dict[str, str]:
    """Selection rule -> one of its reasons this run (a reason quotes the header value that decided)."""
    where, parameters = of_run(run)
    return dict(connection.execute(f"""
        SELECT {col.SELECTION_RULE}, min({col.SKIP_REASON}) FROM predictions
        WHERE {where} AND {col.STATUS} = '{col.STATUS_SKIPPED}' GROUP BY 1""", parameters).fetchall())


def unfamiliar_inputs(connection, run: dict) -> list[dict]:
    """The run's unfamiliar (out-of-distribution) inputs, least familiar first."""
    where, parameters = of_run(run)
    return records(connection, f"""
        SELECT * FROM predictions WHERE {where} AND coalesce({col.OOD}, false)
        ORDER BY {col.OOD_SCORE} DESC NULLS LAST, {col.SOURCE_URI}, {col.FRAME_INDEX}""", parameters)


def series_case(row: dict) -> Case:
    slices = list(zip(row[col.ORDERED_SOURCE_URIS] or [], row[col.ORDERED_FRAME_INDICES] or []))
    return Case(row, slices, list(row[col.ORDERED_TUMOR_PROBABILITIES] or []),
                row[col.MOST_SUSPICIOUS_SLICE_INDEX] or 0)


def image_case(row: dict) -> Case:
    return Case(row, [(row[col.SOURCE_URI], row[col.FRAME_INDEX] or 0)], [row[col.TUMOR_PROBABILITY]], 0)


def cases_section(heading: str, cases: list[Case], heat_note: str, nothing: str) -> str:
    """A list of flagged cases, the first ``MAX_CASES_WITH_IMAGES`` with pictures."""
    return report_cases.cases_section(heading, cases, MAX_CASES_WITH_IMAGES, heat_note, nothing)


# --- building and writing ------------------------------------------------------------------------------------------


def build_report(output: str, run_id: str | None = None) -> tuple[dict, str]:
    """(the run's ``runs`` row, its report's HTML) for a committed run (None: the latest)."""
    connection = views.connect(output)
    run = run_row(connection, run_id or latest_run_id(connection))
    info, heat_note = run_model(run)
    preprocessing = info.preprocessing if info else PreprocessConfig()
    series = [series_case(row) for row in flagged_series(connection, run)]
    images = [image_case(row) for row in flagged_images(connection, run)]
    draw_pictures(series[:MAX_CASES_WITH_IMAGES] + images[:MAX_CASES_WITH_IMAGES], preprocessing, info)
    unfamiliar = unfamiliar_inputs(connection, run)
    sections = [
        summary_section(run, info, skip_reasons(connection, run)),
        charts_section(class_counts(connection, run), probability_bins(connection, run), run),
        cases_section("Flagged series", series, heat_note, "No series flagged tonight."),
        cases_section("Flagged images outside any series", images, heat_note, "No image outside a series flagged."),
        unfamiliar_section(unfamiliar, unfamiliar_thumbnails(unfamiliar[:MAX_CASES_WITH_IMAGES], preprocessing)),
        footer(output, run)]
    return run, page(title(run), banner(run), sections)


def report_uri(output: str, run_date: str, run_id: str) -> str:
    return storage.join(output, REPORTS, run_date, f"{run_id}.html")


def write_report(output: str, run_id: str | None = None, destination: str | None = None) -> str:
    """Build a committed run's report and write it to ``destination`` (default: its place under the output);
    returns where it went."""
    run, document = build_report(output, run_id)
    uri = destination or report_uri(output, run[col.RUN_DATE], run[col.RUN_ID])
    storage.write_text(uri, document)
    return uri


def publish_run_report(output: str, run_id: str, needs_model: bool) -> str | None:
    """The report of a run that just committed, written under the output; its URI, or None when it failed (a
    warning says how to rebuild it: the run stays committed). With ``needs_model`` (something was flagged, so
    there are heat maps to draw) it is built in a Ray task, so TensorFlow loads in a worker, not the driver."""
    try:
        if needs_model:
            ensure_ray()
            uri = ray.get(ray.remote(write_report).options(num_cpus=1, max_retries=1).remote(output, run_id))
        else:
            uri = write_report(output, run_id)
        logger.info("run %s: report written to %s", run_id, uri)
        return uri
    except Exception as error:  # the run is committed whatever happens to its report
        logger.warning("run %s is committed, but its report could not be written (%s: %s); rebuild it with "
                       "`python -m jobs.query report --results %s --run-id %s`", run_id, type(error).__name__,
                       " ".join(str(error).split())[:300], output, run_id)
        return None
