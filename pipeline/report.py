"""The morning report: one committed run in, one self-contained HTML file out (images embedded as data URIs, inline
SVG charts, no script, no font or request from anywhere), for the radiologist who reads the night's results.

Top to bottom: the run summary (counts, errors by code, skipped by reason, the model and its operating point);
charts of the night (predicted classes, tumor probabilities against the threshold); the flagged series, most
suspicious first, each with its pseudonymous keys and study date, the deciding slice's class probabilities, the
deciding slice enlarged beside its Grad-CAM heat map (``model.gradcam``) and thumbnails of its slices in order;
flagged images outside any series (JPEG, PNG) the same way; the unfamiliar (out-of-distribution) inputs. The first
``MAX_CASES_WITH_IMAGES`` of each list get pictures, the rest a line each. Rows come from the committed tables
(``pipeline.views``); slices are re-read from their source URIs, decoded and preprocessed as scoring did. Only the
tables' pseudonymous keys, study dates and modalities describe a patient; every text is escaped.

After a run commits, ``publish_run_report`` writes ``<output>/reports/<run_date>/<run_id>.html``, from a Ray task
when there are heat maps to draw (TensorFlow then loads in a worker, never in the driver);
``python -m jobs.query report`` rebuilds any committed run's report.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import json
import logging

import cv2
import numpy as np
import ray

from infra import storage
from infra.ray_runtime import ensure_ray
from model import registry
from model.decode import DecodeError, DecodeLimits, decode_file
from model.labels import CLASS_NAMES
from model.preprocessing import PreprocessConfig, preprocess_image
from pipeline import schema as col
from pipeline import results, views

logger = logging.getLogger(__name__)

REPORTS = "reports"
MAX_CASES_WITH_IMAGES = 50  # per list (series, images, unfamiliar inputs); the rest are listed without pictures
MAX_THUMBNAILS = 40  # slices shown per series: a window around the deciding slice
THUMBNAIL_SIZE = 72
BINS = 20  # of the tumor-probability histogram
esc = html.escape


class ReportError(ValueError):
    """A report that cannot be built as asked (no such run); the message is one line."""


@dataclasses.dataclass
class Case:
    """A flagged series, or a flagged image outside any series (one slice), with its pictures once drawn."""

    row: dict  # the series row with its deciding slice's probabilities, or the image's prediction row
    slices: list[tuple[str, int]]  # (source URI, frame index), in slice order
    slice_probabilities: list[float | None]
    deciding: int
    thumbnails: dict[int, str | None] = dataclasses.field(default_factory=dict)  # slice index -> data URI
    deciding_image: np.ndarray | None = None
    heat_map: str | None = None  # data URI of the Grad-CAM overlay


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


def json_counts(text: str | None) -> dict[str, int]:
    try:
        return dict(json.loads(text)) if text else {}
    except (TypeError, ValueError):
        return {}


# --- the model and the pictures ----------------------------------------------------------------------------------


def run_model(run: dict) -> tuple[registry.ModelInfo | None, str]:
    """The model that scored the run, where the run took it from (a model folder, or that version in a registry),
    checked by its weights' sha256; or None and a sentence saying why there are no heat maps."""
    source = json.loads(run.get(col.OPTIONS) or "{}").get("model") or registry.DEFAULT_MODEL
    for candidate in (source, storage.join(source, run[col.MODEL_VERSION] or "")):
        try:
            info = registry.load_model_info(candidate)
        except (registry.ModelError, storage.StorageError):
            continue
        if info.weights_sha256 == run[col.MODEL_SHA256]:
            return info, ""
    return None, (f"no heat maps: the model {run[col.MODEL_VERSION]} (weights sha256 "
                  f"{(run[col.MODEL_SHA256] or '')[:12]}) that scored this run is no longer at {source}")


class SliceReader:
    """Slices re-read from their source files, decoded and preprocessed as scoring did. The last file read stays
    decoded (a series' slices, a multi-frame object's frames, come in a row). An unreadable slice is None: the file
    changed or vanished since the run."""

    def __init__(self, preprocessing: PreprocessConfig, limits: DecodeLimits = DecodeLimits()):
        self.preprocessing, self.limits, self.frames = preprocessing, limits, {}

    def __call__(self, uri: str, frame_index: int) -> np.ndarray | None:
        if uri not in self.frames:
            self.frames = {uri: self.decoded_frames(uri)}
        frames = self.frames[uri]
        return preprocess_image(frames[frame_index], self.preprocessing) if frame_index < len(frames) else None

    def decoded_frames(self, uri: str) -> list[np.ndarray]:
        try:
            return decode_file(storage.read_bytes(uri, max_bytes=self.limits.max_file_bytes), uri, self.limits).frames
        except (storage.StorageError, DecodeError) as error:
            logger.warning("report: %s cannot be shown: %s", uri, error)
            return []


def png_uri(image: np.ndarray, size: int | None = None) -> str:
    """A grey or RGB uint8 image as a PNG data URI, resized to ``size`` square when given."""
    if size is not None:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    _, encoded = cv2.imencode(".png", image)
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def shown_slices(case: Case) -> range:
    """The window of at most ``MAX_THUMBNAILS`` slices around the deciding one."""
    count = len(case.slices)
    start = min(max(0, case.deciding - MAX_THUMBNAILS // 2), max(0, count - MAX_THUMBNAILS))
    return range(start, min(count, start + MAX_THUMBNAILS))


def draw_thumbnails(case: Case, reader: SliceReader) -> None:
    for index in shown_slices(case):
        image = reader(*case.slices[index])
        case.thumbnails[index] = None if image is None else png_uri(image, THUMBNAIL_SIZE)
        if index == case.deciding:
            case.deciding_image = image


def draw_heat_maps(cases: list[Case], info: registry.ModelInfo) -> None:
    """Grad-CAM of the tumor score on each case's deciding slice, blended over it."""
    from model.gradcam import TUMOR, GradCam, overlay  # TensorFlow: loaded only where heat maps are drawn

    shown = [case for case in cases if case.deciding_image is not None]
    if not shown:
        return
    maps = GradCam.from_model_info(info, info.weights_sha256)(np.stack([case.deciding_image for case in shown]),
                                                               target=TUMOR)
    for case, heat_map in zip(shown, maps):
        case.heat_map = png_uri(overlay(case.deciding_image, heat_map))


def draw_pictures(cases: list[Case], preprocessing: PreprocessConfig, info: registry.ModelInfo | None) -> None:
    reader = SliceReader(preprocessing)
    for case in cases:
        draw_thumbnails(case, reader)
    if info is not None:
        draw_heat_maps(cases, info)


def unfamiliar_thumbnails(rows: list[dict], preprocessing: PreprocessConfig) -> list[str | None]:
    reader = SliceReader(preprocessing)
    images = [reader(row[col.SOURCE_URI], row[col.FRAME_INDEX] or 0) for row in rows]
    return [None if image is None else png_uri(image, THUMBNAIL_SIZE) for image in images]


# --- HTML ----------------------------------------------------------------------------------------------------------

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;color:#1d2430;
background:#f4f5f7;font-size:14px;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:0 20px 40px}
header.top{background:#1f2a44;color:#fff;padding:18px 20px}
header.top div{max-width:1180px;margin:0 auto}
header.top h1{margin:0;font-size:22px} header.top p{margin:4px 0 0;color:#c9d2e3}
h2{font-size:18px;margin:28px 0 10px;border-bottom:2px solid #d9dde5;padding-bottom:4px}
section.panel,article.case{background:#fff;border:1px solid #d9dde5;border-radius:6px;padding:14px 16px;margin:12px 0}
section.panel>p:first-child{margin-top:0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:8px}
.stat{background:#f4f5f7;border-radius:4px;padding:8px 10px}
.stat b{display:block;font-size:20px} .stat span{color:#5b6475;font-size:12px}
.stat.alert b{color:#b42318}
table{border-collapse:collapse;margin:6px 0} td,th{padding:3px 10px 3px 0;text-align:left;vertical-align:top}
th{color:#5b6475;font-weight:600;white-space:nowrap} td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.key{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px;overflow-wrap:anywhere}
.columns{display:flex;flex-wrap:wrap;gap:16px 48px;margin-top:12px} .columns figure{margin:0}
figcaption{font-size:12px;color:#5b6475}
article.case>h3{margin:0 0 10px;font-size:16px} .rank{color:#5b6475;margin-right:6px}
.prob{color:#b42318;font-weight:700}
.body{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.body figure{margin:0} .body img{width:256px;height:256px;border-radius:4px;background:#000}
.facts{flex:1;min-width:280px}
.bar{display:inline-block;width:140px;height:10px;background:#e8eaef;border-radius:5px;vertical-align:middle}
.bar i{display:block;height:10px;border-radius:5px;background:#7a869a}
.bar i.top{background:#b42318}
.strip{display:flex;flex-wrap:wrap;gap:6px;margin-top:12px}
.strip figure{margin:0;text-align:center;width:76px}
.strip img,.missing{width:72px;height:72px;border:2px solid transparent;border-radius:3px;background:#000;display:block}
.strip figure.deciding img{border-color:#b42318}
.missing{background:#e8eaef;color:#5b6475;font-size:11px;line-height:72px}
.note{color:#5b6475} .empty{color:#5b6475;font-style:italic}
footer{color:#5b6475;font-size:12px;margin-top:30px}
"""


def page(heading: str, top: str, sections: list[str]) -> str:
    """The whole document; its Content-Security-Policy forbids any request but data: images."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            f"style-src 'unsafe-inline'\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<link rel=\"icon\" href=\"data:,\"><title>{esc(heading)}</title><style>{STYLE}</style></head>"
            f"<body>{top}<main>{''.join(sections)}</main></body></html>\n")


def number(value, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def study_date(value: str | None) -> str:
    """A DICOM date (YYYYMMDD) written YYYY-MM-DD; other values as they are."""
    text = value or "–"
    return f"{text[:4]}-{text[4:6]}-{text[6:]}" if len(text) == 8 and text.isdigit() else text


def moment(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if isinstance(value, datetime.datetime) else str(value or "–")


def stat(label: str, value, alert: bool = False) -> str:
    return f"<div class=\"stat{' alert' if alert else ''}\"><b>{esc(number(value))}</b><span>{esc(label)}</span></div>"


def count_table(counts: dict[str, int], heading: str, meanings: dict[str, str]) -> str:
    """A heading and one line per code: the code, what it means, how many."""
    if not counts:
        return f"<div><b>{esc(heading)}</b><p class=\"empty\">None.</p></div>"
    rows = "".join(f"<tr><td><code>{esc(str(name))}</code></td><td>{esc(meanings.get(name) or '')}</td>"
                   f"<td class=\"num\">{esc(number(count))}</td></tr>"
                   for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    return f"<div><b>{esc(heading)}</b><table>{rows}</table></div>"


def model_text(run: dict, info: registry.ModelInfo | None) -> str:
    """The model and the threshold the run flagged at, with the operating point validation chose."""
    threshold = run[col.THRESHOLD]
    text = (f"Model <b>{esc(run[col.MODEL_VERSION] or '–')}</b> (weights sha256 "
            f"<code>{esc((run[col.MODEL_SHA256] or '')[:12])}</code>), flagging at tumor probability "
            f"&ge; <b>{esc(number(threshold, 2))}</b>.")
    point = (info.metadata.get("operating_point") or {}) if info else {}
    if point:
        text += (f" Its operating point, chosen on validation for tumor sensitivity &ge; "
                 f"{esc(number(point.get('target_sensitivity'), 2))}: threshold {esc(number(info.threshold, 2))}, "
                 f"sensitivity {esc(number(point.get('validation_sensitivity'), 3))}, specificity "
                 f"{esc(number(point.get('validation_specificity'), 3))}.")
        if threshold is not None and abs(threshold - info.threshold) > 1e-9:
            text += " <b>This run set its own threshold.</b>"
    return f"<p>{text}</p>"


def summary_section(run: dict, info: registry.ModelInfo | None, skip_reasons: dict[str, str]) -> str:
    flagged = (run[col.ROWS_FLAGGED] or 0) + (run[col.SERIES_FLAGGED] or 0) > 0
    stats = "".join([
        stat("files listed", run[col.FILES_LISTED]), stat("files unchanged (not rescored)", run[col.FILES_UNCHANGED]),
        stat("images scored", run[col.ROWS_SCORED]), stat("flagged images", run[col.ROWS_FLAGGED], flagged),
        stat("series", run[col.SERIES]), stat("flagged series", run[col.SERIES_FLAGGED], flagged),
        stat("unfamiliar inputs", run[col.ROWS_OOD] or 0), stat("skipped (not brain MRI)", run[col.ROWS_SKIPPED] or 0),
        stat("errors", run[col.ROWS_ERROR], bool(run[col.ROWS_ERROR]))])
    speed = (f"{esc(number(run[col.DURATION_SECONDS], 1))} s, {esc(number(run[col.IMAGES_PER_SECOND], 1))} "
             f"images/s")
    return (f"<h2>The night</h2><section class=\"panel\"><p>Run <code>{esc(run[col.RUN_ID])}</code> "
            f"({esc(run[col.MODE] or '')}), {esc(moment(run[col.STARTED_AT]))}, {speed}. Input "
            f"<code>{esc(run[col.INPUT] or '')}</code>.</p>{model_text(run, info)}<div class=\"grid\">{stats}</div>"
            f"<div class=\"columns\">"
            f"{count_table(json_counts(run[col.ERRORS_BY_CODE]), 'Errors by code', col.ERROR_CODES)}"
            f"{count_table(json_counts(run[col.SKIPPED_BY_REASON]), 'Skipped by rule', skip_reasons)}</div></section>")


def bar_chart(counts: dict[str, int], unfamiliar: int) -> str:
    """Horizontal bars: scored images per predicted class, and the unfamiliar inputs apart."""
    items = [*counts.items(), ("unfamiliar", unfamiliar)]
    top, width, row = max([1, *(count for _, count in items)]), 260, 26
    bars = []
    for index, (name, count) in enumerate(items):
        y = 8 + index * row
        length = round(width * count / top)
        colour = "#9aa3b2" if name == "unfamiliar" else ("#2f6f4f" if name == "notumor" else "#b42318")
        bars.append(f"<text x=\"110\" y=\"{y + 14}\" text-anchor=\"end\" font-size=\"12\">{esc(name)}</text>"
                    f"<rect x=\"118\" y=\"{y}\" width=\"{max(length, 1)}\" height=\"18\" fill=\"{colour}\">"
                    f"<title>{esc(name)}: {count}</title></rect>"
                    f"<text x=\"{124 + length}\" y=\"{y + 14}\" font-size=\"12\">{count}</text>")
    height = 16 + len(items) * row
    return (f"<figure><svg width=\"440\" height=\"{height}\" role=\"img\" "
            f"aria-label=\"images per predicted class\" font-family=\"sans-serif\" fill=\"#1d2430\">{''.join(bars)}"
            f"</svg><figcaption>Scored images per predicted class (unfamiliar inputs counted apart)</figcaption>"
            f"</figure>")


def histogram(bins: list[int], threshold: float | None) -> str:
    """Tumor probabilities of the night's scored images in ``BINS`` bins, those at or above the threshold red."""
    left, bottom, width, height = 40, 170, 380, 140
    top, step = max([1, *bins]), width / BINS
    parts = [f"<line x1=\"{left}\" y1=\"{bottom}\" x2=\"{left + width}\" y2=\"{bottom}\" stroke=\"#5b6475\"/>"]
    for index, count in enumerate(bins):
        tall = height * count / top
        red = threshold is not None and (index + 1) / BINS > threshold
        parts.append(f"<rect x=\"{left + index * step + 1:.1f}\" y=\"{bottom - tall:.1f}\" width=\"{step - 2:.1f}\" "
                     f"height=\"{tall:.1f}\" fill=\"{'#b42318' if red else '#7a869a'}\"><title>"
                     f"{index / BINS:.2f}-{(index + 1) / BINS:.2f}: {count}</title></rect>")
        if count:
            parts.append(f"<text x=\"{left + (index + 0.5) * step:.1f}\" y=\"{bottom - tall - 3:.1f}\" "
                         f"text-anchor=\"middle\" font-size=\"10\">{count}</text>")
    for tick in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f"<text x=\"{left + tick * width:.1f}\" y=\"{bottom + 14}\" text-anchor=\"middle\" "
                     f"font-size=\"11\">{tick:g}</text>")
    if threshold is not None:
        x = left + threshold * width
        parts.append(f"<line x1=\"{x:.1f}\" y1=\"{bottom - height - 10}\" x2=\"{x:.1f}\" y2=\"{bottom}\" "
                     f"stroke=\"#1d2430\" stroke-dasharray=\"4 3\"/><text x=\"{x + 4:.1f}\" "
                     f"y=\"{bottom - height - 2}\" font-size=\"11\">threshold {threshold:.2f}</text>")
    return (f"<figure><svg width=\"440\" height=\"200\" role=\"img\" "
            f"aria-label=\"tumor probability histogram\" font-family=\"sans-serif\" fill=\"#1d2430\">"
            f"{''.join(parts)}</svg><figcaption>Tumor probability of the scored images (count per bin)</figcaption>"
            f"</figure>")


def charts_section(counts: dict[str, int], bins: list[int], run: dict) -> str:
    return (f"<section class=\"panel\"><div class=\"columns\">{bar_chart(counts, run[col.ROWS_OOD] or 0)}"
            f"{histogram(bins, run[col.THRESHOLD])}</div></section>")


def probability_bars(row: dict) -> str:
    values = {name: row.get(column) for name, column in zip(CLASS_NAMES, col.PROBABILITY_COLUMNS)}
    if all(value is None for value in values.values()):
        return "<p class=\"empty\">Class probabilities: not recorded.</p>"
    best = max(values, key=lambda name: values[name] or 0.0)
    marks = {name: ' class="top"' if name == best else "" for name in values}
    rows = "".join(f"<tr><td>{esc(name)}</td><td><span class=\"bar\"><i{marks[name]} "
                   f"style=\"width:{100 * (value or 0):.1f}%\"></i></span></td>"
                   f"<td class=\"num\">{esc(number(value, 3))}</td></tr>" for name, value in values.items())
    return f"<table><caption style=\"text-align:left\"><b>Class probabilities</b></caption>{rows}</table>"


def facts(case: Case) -> str:
    row = case.row
    if row.get(col.ORDERED_SOURCE_URIS) is not None:
        items = [("patient key", row[col.PATIENT_KEY]), ("study key", row[col.STUDY_KEY]),
                 ("series key", row[col.SERIES_KEY]), ("study date", study_date(row[col.STUDY_DATE])),
                 ("modality", row[col.MODALITY]),
                 ("slices", f"{row[col.SLICES]} ({row[col.SLICES_SCORED]} scored, {row[col.SLICES_OOD] or 0} "
                            f"unfamiliar, {row[col.SLICES_SKIPPED] or 0} skipped); ordered by {row[col.SLICE_ORDER]}"),
                 ("deciding slice", f"{case.deciding + 1} of {len(case.slices)}")]
    else:
        items = [("file", row[col.SOURCE_URI]), ("format", row[col.FILE_FORMAT]),
                 ("frame", row[col.FRAME_INDEX])]
    cells = "".join(f"<tr><th>{esc(name)}</th><td class=\"key\">{esc(str(value if value is not None else '–'))}</td>"
                    f"</tr>" for name, value in items)
    return f"<div class=\"facts\"><table>{cells}</table>{probability_bars(row)}</div>"


def deciding_figures(case: Case, heat_note: str) -> str:
    image = case.thumbnails.get(case.deciding)
    if case.deciding_image is None or image is None:
        return "<p class=\"empty\">The deciding slice could not be re-read from its source file.</p>"
    figures = (f"<figure><img src=\"{png_uri(case.deciding_image)}\" alt=\"deciding slice\">"
               f"<figcaption>Deciding slice, as the model saw it</figcaption></figure>")
    if case.heat_map:
        return figures + (f"<figure><img src=\"{case.heat_map}\" alt=\"Grad-CAM heat map\"><figcaption>Grad-CAM: "
                          f"where the model found tumor evidence (red)</figcaption></figure>")
    return figures + f"<p class=\"note\">{esc(heat_note)}</p>"


def thumbnail_strip(case: Case) -> str:
    if len(case.slices) < 2:
        return ""
    shown = shown_slices(case)
    figures = []
    for index in shown:
        probability = case.slice_probabilities[index] if index < len(case.slice_probabilities) else None
        uri = case.thumbnails.get(index)
        picture = f"<img src=\"{uri}\" alt=\"slice {index + 1}\">" if uri else "<span class=\"missing\">n/a</span>"
        mark = ' class="deciding"' if index == case.deciding else ""
        figures.append(f"<figure{mark}>{picture}<figcaption>"
                       f"{index + 1} · {esc(number(probability, 2))}</figcaption></figure>")
    note = "" if len(shown) == len(case.slices) else (
        f"<p class=\"note\">Slices {shown.start + 1}-{shown.stop} of {len(case.slices)}, around the deciding one.</p>")
    return f"{note}<div class=\"strip\">{''.join(figures)}</div>"


def case_card(rank: int, case: Case, heat_note: str) -> str:
    row = case.row
    return (f"<article class=\"case\"><h3><span class=\"rank\">#{rank}</span>{esc(row[col.PREDICTED_CLASS] or '–')}"
            f" · <span class=\"prob\">tumor probability {esc(number(row[col.TUMOR_PROBABILITY], 3))}</span></h3>"
            f"<div class=\"body\">{deciding_figures(case, heat_note)}{facts(case)}</div>{thumbnail_strip(case)}"
            f"</article>")


def case_line(rank: int, case: Case) -> str:
    row = case.row
    name = row.get(col.SERIES_KEY) or row.get(col.SOURCE_URI)
    return (f"<tr><td class=\"num\">{rank}</td><td class=\"num\">{esc(number(row[col.TUMOR_PROBABILITY], 3))}</td>"
            f"<td>{esc(row[col.PREDICTED_CLASS] or '–')}</td><td class=\"key\">{esc(str(name))}</td>"
            f"<td class=\"key\">{esc(str(row.get(col.PATIENT_KEY) or '–'))}</td>"
            f"<td>{esc(study_date(row.get(col.STUDY_DATE)))}</td></tr>")


def cases_section(title: str, cases: list[Case], heat_note: str, nothing: str) -> str:
    if not cases:
        return f"<h2>{esc(title)}</h2><p class=\"empty\">{esc(nothing)}</p>"
    cards = "".join(case_card(rank, case, heat_note) for rank, case in enumerate(cases[:MAX_CASES_WITH_IMAGES], 1))
    rest = cases[MAX_CASES_WITH_IMAGES:]
    if rest:
        lines = "".join(case_line(rank, case) for rank, case in enumerate(rest, MAX_CASES_WITH_IMAGES + 1))
        cards += (f"<section class=\"panel\"><p class=\"note\">{len(rest)} more, without pictures (the report "
                  f"shows pictures for the first {MAX_CASES_WITH_IMAGES}):</p><table><tr><th>#</th><th>tumor p</th>"
                  f"<th>class</th><th>series key / file</th><th>patient key</th><th>study date</th></tr>{lines}"
                  f"</table></section>")
    return f"<h2>{esc(title)} ({len(cases)})</h2>{cards}"


def unfamiliar_section(rows: list[dict], thumbnails: list[str | None]) -> str:
    title = "Unfamiliar inputs (counted as neither tumor nor no tumor: read them yourself)"
    if not rows:
        return f"<h2>{esc(title)}</h2><p class=\"empty\">None tonight.</p>"
    lines = []
    for index, row in enumerate(rows):
        uri = thumbnails[index] if index < len(thumbnails) else None
        picture = f"<img src=\"{uri}\" alt=\"unfamiliar input\" width=\"72\" height=\"72\">" if uri else "–"
        lines.append(f"<tr><td>{picture}</td><td class=\"num\">{esc(number(row[col.OOD_SCORE], 2))}</td>"
                     f"<td class=\"key\">{esc(row[col.SOURCE_URI])} #{esc(str(row[col.FRAME_INDEX]))}</td>"
                     f"<td class=\"key\">{esc(row[col.SERIES_KEY] or '–')}</td>"
                     f"<td>{esc(study_date(row[col.STUDY_DATE]))}</td></tr>")
    note = "" if len(thumbnails) >= len(rows) else f"<p class=\"note\">Pictures for the first {len(thumbnails)}.</p>"
    return (f"<h2>{esc(title)} ({len(rows)})</h2><section class=\"panel\">{note}<table><tr><th></th>"
            f"<th>score</th><th>file #frame</th><th>series key</th><th>study date</th></tr>{''.join(lines)}</table>"
            f"</section>")


def banner(run: dict) -> str:
    return (f"<header class=\"top\"><div><h1>{esc(title(run))}</h1><p>Flagged series first, most suspicious "
            f"first. Run {esc(run[col.RUN_ID])}, finished {esc(moment(run[col.FINISHED_AT]))}.</p></div></header>")


def title(run: dict) -> str:
    return f"Brain MRI screening: night of {run[col.RUN_DATE]}"


def footer(output: str, run: dict) -> str:
    return (f"<footer><p>Built {esc(moment(results.utc_now()))} from the committed tables of "
            f"<code>{esc(output)}</code>; rebuild with <code>python -m jobs.query report --results {esc(output)} "
            f"--run-id {esc(run[col.RUN_ID])}</code>. Patients, studies and series appear only as pseudonymous keys; "
            f"a site holding the pseudonym key finds a patient with <code>python -m jobs.query patient "
            f"--patient-id</code>. A screening aid: every finding needs a radiologist's reading.</p></footer>")


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
