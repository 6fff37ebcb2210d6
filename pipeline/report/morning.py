"""The morning report: one committed run in, one self-contained HTML file out (images embedded as data URIs, inline
SVG charts, no script, no font or request from anywhere), for the radiologist who reads the night's results. This
module decides what it shows: the run's rows from the committed tables (``pipeline.results.views``), the flagged series and
the flagged images outside any series, most suspicious first, each series with the slices that took no part in its
decision (unfamiliar, skipped, not read), and the unfamiliar (out-of-distribution) inputs, highest tumor probability
first; the first ``MAX_CASES_WITH_IMAGES`` of each list get pictures (``pipeline.report.images``), the rest a line
each. The page is written by ``pipeline.report.html`` (skeleton, summary), ``pipeline.report.charts`` and
``pipeline.report.cases``; only the tables' pseudonymous keys, study dates and modalities describe a patient, a file
is named by its reference and file name, never its folders (``FileNames``, ``pipeline.sources.paths``), and every text is
escaped. After a run commits, ``publish_run_report`` writes ``<output>/reports/<run_date>/<run_id>.html``, logging
each step; the heat maps are drawn in a Ray task (TensorFlow then loads in a worker, never in the driver), the rest
in the driver. ``python -m jobs.query report`` rebuilds any committed run's report.
"""

from __future__ import annotations

import logging
import time

import ray

from infra import storage
from infra.ray_runtime import ensure_ray
from model.labels import CLASS_NAMES
from model.preprocessing import PreprocessConfig
from pipeline.results import views
from pipeline.sources import paths
from pipeline.sources.pacs import PacsOptions
from pipeline import schema as col
from pipeline.pseudonym import load_key
from pipeline.report.cases import cases_section as card_list, unfamiliar_section
from pipeline.report.charts import BINS, charts_section
from pipeline.report.html import banner, footer, page, summary_section, title
from pipeline.report.images import (FILE_LABEL, Case, HeatMaps, SliceReader, draw_pictures, heat_map_overlays,
                                   run_model, unfamiliar_thumbnails)

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
    return run_series(connection, run, flagged_only=True)


DECIDING_SCORED_AT = "deciding_scored_at"  # in a ``run_series`` row: when its deciding slice was scored


def run_series(connection, run: dict, flagged_only: bool = False) -> list[dict]:
    """The run's series (``flagged_only``: its flagged series), most suspicious first (those without a verdict
    last), each with its deciding slice's class probabilities and when it was scored (``DECIDING_SCORED_AT``), from
    the latest complete run (up to this one) that scored that slice (null when none did)."""
    where, parameters = of_run(run)
    probabilities = ", ".join(f"p.{name}" for name in col.PROBABILITY_COLUMNS)
    return records(connection, f"""
        WITH chosen AS (
            SELECT *, {col.ORDERED_SOURCE_URIS}[{col.MOST_SUSPICIOUS_SLICE_INDEX} + 1] AS deciding_uri,
                   {col.ORDERED_FRAME_INDICES}[{col.MOST_SUSPICIOUS_SLICE_INDEX} + 1] AS deciding_frame
            FROM series WHERE {where} {f"AND {col.FLAGGED}" if flagged_only else ""}),
        scored AS (
            SELECT p.*, r.{col.FINISHED_AT} AS scored_by_run_at FROM predictions p
            JOIN runs r ON p.{col.RUN_ID} = r.{col.RUN_ID}
            WHERE p.{col.SOURCE_URI} IN (SELECT deciding_uri FROM chosen) AND r.{col.FINISHED_AT} <= ?)
        SELECT f.*, {probabilities}, p.{col.SCORED_AT} AS {DECIDING_SCORED_AT} FROM chosen f
        LEFT JOIN scored p ON p.{col.SOURCE_URI} = f.deciding_uri AND p.{col.FRAME_INDEX} = f.deciding_frame
        QUALIFY row_number() OVER (PARTITION BY f.{col.SERIES_KEY} ORDER BY p.scored_by_run_at DESC NULLS LAST) = 1
        ORDER BY f.{col.TUMOR_PROBABILITY} DESC NULLS LAST, f.{col.SERIES_KEY}""",
                   [*parameters, run[col.FINISHED_AT]])


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
    """The run's unfamiliar (out-of-distribution) inputs, highest tumor probability first (then least familiar)."""
    where, parameters = of_run(run)
    return records(connection, f"""
        SELECT * FROM predictions WHERE {where} AND coalesce({col.OOD}, false)
        ORDER BY {col.TUMOR_PROBABILITY} DESC NULLS LAST, {col.OOD_SCORE} DESC NULLS LAST, {col.SOURCE_URI},
                 {col.FRAME_INDEX}""", parameters)


SET_ASIDE = {"ood": "unfamiliar", col.STATUS_SKIPPED: "skipped", col.STATUS_ERROR: "not read"}


def set_aside_slices(connection, run: dict) -> dict[str, dict[int, str]]:
    """Series key -> {ordered slice index: why it took no part in the decision} for the run's flagged series: each
    slice as the latest complete run (up to this one) that scored it left it (unfamiliar, skipped, not read)."""
    where, parameters = of_run(run)
    rows = connection.execute(f"""
        WITH slices AS (
            SELECT {col.SERIES_KEY}, unnest({col.ORDERED_SOURCE_URIS}) AS uri,
                   unnest({col.ORDERED_FRAME_INDICES}) AS frame,
                   unnest(range(len({col.ORDERED_SOURCE_URIS}))) AS position
            FROM series WHERE {where} AND {col.FLAGGED}),
        scored AS (
            SELECT p.{col.SOURCE_URI}, p.{col.FRAME_INDEX}, p.{col.STATUS}, p.{col.OOD}, r.{col.FINISHED_AT}
            FROM predictions p JOIN runs r ON p.{col.RUN_ID} = r.{col.RUN_ID}
            WHERE p.{col.SOURCE_URI} IN (SELECT uri FROM slices) AND r.{col.FINISHED_AT} <= ?)
        SELECT s.{col.SERIES_KEY}, s.position, p.{col.STATUS}, coalesce(p.{col.OOD}, false) FROM slices s
        JOIN scored p ON p.{col.SOURCE_URI} = s.uri AND p.{col.FRAME_INDEX} = s.frame
        QUALIFY row_number() OVER (PARTITION BY s.{col.SERIES_KEY}, s.position ORDER BY p.{col.FINISHED_AT} DESC) = 1
        """, [*parameters, run[col.FINISHED_AT]]).fetchall()
    found: dict[str, dict[int, str]] = {}
    for series_key, position, status, ood in rows:
        reason = SET_ASIDE["ood"] if status == col.STATUS_OK and ood else SET_ASIDE.get(status)
        if reason:
            found.setdefault(series_key, {})[int(position)] = reason
    return found


def series_case(row: dict) -> Case:
    slices = list(zip(row[col.ORDERED_SOURCE_URIS] or [], row[col.ORDERED_FRAME_INDICES] or []))
    return Case(row, slices, list(row[col.ORDERED_TUMOR_PROBABILITIES] or []),
                row[col.MOST_SUSPICIOUS_SLICE_INDEX] or 0)


def image_case(row: dict) -> Case:
    return Case(row, [(row[col.SOURCE_URI], row[col.FRAME_INDEX] or 0)], [row[col.TUMOR_PROBABILITY]], 0)


def cases_section(heading: str, cases: list[Case], heat_note: str, nothing: str) -> str:
    """A list of flagged cases, the first ``MAX_CASES_WITH_IMAGES`` with pictures."""
    return card_list(heading, cases, MAX_CASES_WITH_IMAGES, heat_note, nothing)


# --- building and writing ------------------------------------------------------------------------------------------


class FileNames:
    """How the report names a stored ``source_uri``: its reference and file name, never its folders
    (``pipeline.sources.paths``); and where to read it again (its real path, when its folder names were pseudonymised)."""

    def __init__(self, key: bytes | None, run_id: str, pacs: PacsOptions | None = None):
        self.key, self.run_id, self.pacs = key, run_id, pacs

    def reference(self, uri: str) -> str:
        return paths.file_reference(uri, self.key, self.run_id)

    def label(self, rows: list[dict]) -> list[dict]:
        for row in rows:
            uri = row[col.SOURCE_URI]
            row[FILE_LABEL] = f"{self.reference(uri)} · {paths.file_name(uri)}" if uri else "–"
        return rows

    def locate(self, uri: str) -> str | None:
        if not paths.DIRECTORY_PSEUDONYM.search(uri):
            return uri
        return paths.resolve_pseudonymized(uri, self.key, self.pacs) if self.key is not None else None


def with_set_aside(cases: list[Case], set_aside: dict[str, dict[int, str]]) -> list[Case]:
    for case in cases:
        case.set_aside = set_aside.get(case.row[col.SERIES_KEY], {})
    return cases


def build_report(output: str, run_id: str | None = None, key: bytes | None = None,
                 heat_maps: HeatMaps = heat_map_overlays, pacs: PacsOptions | None = None) -> tuple[dict, str]:
    """(the run's ``runs`` row, its report's HTML) for a committed run (None: the latest). ``key`` (the pseudonym
    key) derives the files' references and finds pseudonymised folders; ``heat_maps`` draws the heat maps; ``pacs``
    reaches the PACS a run's instances came from."""
    started = time.monotonic()
    connection = views.connect(output)
    run = run_row(connection, run_id or latest_run_id(connection))
    info, heat_note = run_model(run)
    preprocessing = info.preprocessing if info else PreprocessConfig()
    names = FileNames(key, run[col.RUN_ID], pacs)
    series = with_set_aside([series_case(row) for row in flagged_series(connection, run)],
                            set_aside_slices(connection, run))
    images = [image_case(row) for row in names.label(flagged_images(connection, run))]
    unfamiliar = names.label(unfamiliar_inputs(connection, run))
    logger.info("report on run %s: %d flagged series, %d flagged images, %d unfamiliar inputs; re-reading their "
                "slices", run[col.RUN_ID], len(series), len(images), len(unfamiliar))
    reader = SliceReader(preprocessing, locate=names.locate, name=names.reference, pacs=pacs)
    draw_pictures(series[:MAX_CASES_WITH_IMAGES] + images[:MAX_CASES_WITH_IMAGES], preprocessing, info, reader,
                  heat_maps)
    thumbnails = unfamiliar_thumbnails(unfamiliar[:MAX_CASES_WITH_IMAGES], preprocessing, reader)
    sections = [
        summary_section(run, info, skip_reasons(connection, run)),
        charts_section(class_counts(connection, run), probability_bins(connection, run), run),
        cases_section("Flagged series", series, heat_note, "No series flagged tonight."),
        cases_section("Flagged images outside any series", images, heat_note, "No image outside a series flagged."),
        unfamiliar_section(unfamiliar, thumbnails, run[col.THRESHOLD]),
        footer(output, run)]
    logger.info("report on run %s built in %.1f s", run[col.RUN_ID], time.monotonic() - started)
    return run, page(title(run), banner(run), sections)


def report_uri(output: str, run_date: str, run_id: str) -> str:
    return storage.join(output, REPORTS, run_date, f"{run_id}.html")


def write_report(output: str, run_id: str | None = None, destination: str | None = None, key: bytes | None = None,
                 heat_maps: HeatMaps = heat_map_overlays, pacs: PacsOptions | None = None) -> str:
    """Build a committed run's report and write it to ``destination`` (default: its place under the output);
    returns where it went. Without ``key``, the pseudonym key is taken from ``PSEUDONYM_KEY`` when it is set."""
    run, document = build_report(output, run_id, key if key is not None else load_key(), heat_maps, pacs)
    uri = destination or report_uri(output, run[col.RUN_DATE], run[col.RUN_ID])
    storage.write_text(uri, document)
    return uri


def heat_maps_in_worker(images, info):
    """``heat_map_overlays`` in a Ray task, so TensorFlow loads in a worker, never in the job's driver."""
    task = ray.remote(heat_map_overlays).options(num_cpus=1, max_retries=1)
    return ray.get(task.remote(images, info))


def publish_run_report(output: str, run_id: str, needs_model: bool, key: bytes | None = None,
                       pacs: PacsOptions | None = None) -> str | None:
    """The report of a run that just committed, written under the output; its URI, or None when it failed (a
    warning says how to rebuild it: the run stays committed). With ``needs_model`` (something was flagged, so
    there are heat maps to draw) the heat maps are drawn in a Ray task; the rest is built here."""
    started = time.monotonic()
    logger.info("run %s: writing its report", run_id)
    try:
        if needs_model:
            ensure_ray()
        uri = write_report(output, run_id, key=key,
                           heat_maps=heat_maps_in_worker if needs_model else heat_map_overlays, pacs=pacs)
        logger.info("run %s: report written to %s in %.1f s", run_id, uri, time.monotonic() - started)
        return uri
    except Exception as error:  # the run is committed whatever happens to its report
        logger.warning("run %s is committed, but its report could not be written (%s: %s); rebuild it with "
                       "`python -m jobs.query report --results %s --run-id %s`", run_id, type(error).__name__,
                       " ".join(str(error).split())[:300], output, run_id)
        return None
