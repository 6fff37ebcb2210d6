"""The morning report's page: the HTML skeleton with its stylesheet and a Content-Security-Policy that forbids any
request but data: images, the run summary (counts, errors by code, skipped by rule, the model and its operating
point), the banner and the footer, and the small formatting helpers every section uses (numbers, DICOM dates,
moments, escaping). In: the run's ``runs`` row and the model that scored it; out: HTML text, every value escaped.
"""

from __future__ import annotations

import datetime
import html
import json

from model import registry
from pipeline.results import tables
from pipeline import schema as col

esc = html.escape


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
.strip figure.set-aside img,.strip figure.set-aside .missing{border:2px dashed #5b6475;opacity:.55}
.aside{color:#5b6475;font-style:italic}
p.decision{margin:10px 0 0;max-width:900px}
tr.high td.tumor-p{white-space:nowrap}
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


def json_counts(text: str | None) -> dict[str, int]:
    try:
        return dict(json.loads(text)) if text else {}
    except (TypeError, ValueError):
        return {}


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
        stat("files carried over from the date's earlier run", run[col.FILES_CARRIED_OVER])
        if run.get(col.FILES_CARRIED_OVER) else "",
        stat("images scored", run[col.ROWS_SCORED]), stat("flagged images", run[col.ROWS_FLAGGED], flagged),
        stat("series", run[col.SERIES]), stat("flagged series", run[col.SERIES_FLAGGED], flagged),
        stat("unfamiliar inputs", run[col.ROWS_OOD] or 0), stat("skipped (not brain MRI)", run[col.ROWS_SKIPPED] or 0),
        stat("errors", run[col.ROWS_ERROR], bool(run[col.ROWS_ERROR]))])
    speed = (f"{esc(number(run[col.DURATION_SECONDS], 1))} s, {esc(number(run[col.IMAGES_PER_SECOND], 1))} "
             f"images/s")
    return (f"<h2>The night</h2><section class=\"panel\"><p>Run <code>{esc(run[col.RUN_ID])}</code> "
            f"({esc(run[col.MODE] or '')}), {esc(moment(run[col.STARTED_AT]))}, {speed}. Files are named by a "
            f"reference and their file name, never by their folders (<code>python -m jobs.query path</code> gives a "
            f"reference's path).</p>{model_text(run, info)}<div class=\"grid\">{stats}</div>"
            f"<div class=\"columns\">"
            f"{count_table(json_counts(run[col.ERRORS_BY_CODE]), 'Errors by code', col.ERROR_CODES)}"
            f"{count_table(json_counts(run[col.SKIPPED_BY_REASON]), 'Skipped by rule', skip_reasons)}</div></section>")


def banner(run: dict) -> str:
    return (f"<header class=\"top\"><div><h1>{esc(title(run))}</h1><p>Flagged series first, most suspicious "
            f"first. Run {esc(run[col.RUN_ID])}, finished {esc(moment(run[col.FINISHED_AT]))}.</p></div></header>")


def title(run: dict) -> str:
    return f"Brain MRI screening: night of {run[col.RUN_DATE]}"


def footer(output: str, run: dict) -> str:
    return (f"<footer><p>Built {esc(moment(tables.utc_now()))} from the committed tables of "
            f"<code>{esc(output)}</code>; rebuild with <code>python -m jobs.query report --results {esc(output)} "
            f"--run-id {esc(run[col.RUN_ID])}</code>. Patients, studies and series appear only as pseudonymous keys; "
            f"a site holding the pseudonym key finds a patient with <code>python -m jobs.query patient "
            f"--patient-id</code>. A screening aid: every finding needs a radiologist's reading.</p></footer>")
