"""The review app's HTML: the worklist page and the case page, every value escaped, under the morning report's
Content-Security-Policy with only what a page that acts needs added: its one script and its requests, from its own
origin (``POLICY``). No font, style sheet, script or image comes from anywhere else; pictures are data: URIs, as in
the report. Keys work from the first moment (``static/review.js``); every action is also a plain button.
"""

from __future__ import annotations

import pathlib
import re
import urllib.parse

from model.labels import CLASS_NAMES
from pipeline import schema as col
from pipeline.report.html import STYLE, esc, number, page, study_date
from pipeline.review.cases import CaseView
from pipeline.review.verdicts import CONFIRMED, DISMISSED, REOPENED, STATES, UNSURE
from pipeline.review.worklist import Item, WorklistFilter

SCRIPT_PATH = "/static/review.js"
SCRIPT = pathlib.Path(__file__).with_name("static") / "review.js"
REPORT_POLICY = re.search(r'Content-Security-Policy" content="([^"]+)"', page("", "", [])).group(1)
# the report's policy, and the page's own script, requests and form posts, from its own origin only
POLICY = f"{REPORT_POLICY}; script-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'"
HEADER_POLICY = f"{POLICY}; frame-ancestors 'none'"  # frame-ancestors holds in a header only, not in a page's meta

REVIEW_STYLE = """
nav.toolbar{display:flex;gap:14px;align-items:center;flex-wrap:wrap;margin:14px 0}
nav.toolbar a{color:#1f2a44}
form.filters{display:flex;gap:10px;flex-wrap:wrap;align-items:end}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:#5b6475}
table.list{width:100%} table.list tr.item:hover,table.list tr.item.current{background:#eef2fb}
.state{display:inline-block;padding:1px 8px;border-radius:9px;font-size:12px;background:#e8eaef}
.state.confirmed{background:#fde2e1;color:#8a1c14} .state.dismissed{background:#dff3e4;color:#1c5b2e}
.state.unsure{background:#fff1c2;color:#6b4e00}
.verdicts{display:flex;gap:8px;flex-wrap:wrap;align-items:center;margin:10px 0}
.verdicts form{margin:0} .verdicts button{padding:5px 10px;font-size:13px;cursor:pointer}
kbd{border:1px solid #c4c9d4;border-radius:3px;padding:0 4px;font-size:11px;background:#fff}
#upload-result table{margin-top:8px}
.body img{width:384px;height:384px} .body figure{width:384px}
"""


def document(heading: str, subtitle: str, body: str) -> str:
    """A whole page: the report's head (its policy replaced by ``POLICY``), its style and the review style, the
    page's script."""
    head = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{POLICY}\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><link rel=\"icon\" "
            f"href=\"data:,\"><title>{esc(heading)}</title><style>{STYLE}{REVIEW_STYLE}</style>"
            f"<script src=\"{SCRIPT_PATH}\" defer></script></head>")
    top = (f"<header class=\"top\"><div><h1>{esc(heading)}</h1><p>{esc(subtitle)}</p></div></header>")
    return f"{head}<body>{top}<main>{body}</main></body></html>\n"


def filter_query(chosen: WorklistFilter) -> str:
    """The worklist's filters as a query string (empty when none)."""
    values = {"from": chosen.dates.first, "to": chosen.dates.last, "class": chosen.predicted_class,
              "state": chosen.state}
    text = urllib.parse.urlencode({name: value for name, value in values.items() if value})
    return f"?{text}" if text else ""


def case_url(found: Item, chosen: WorklistFilter, suffix: str = "") -> str:
    """The case's page (``suffix`` "/verdict": where its verdicts are posted), keeping the worklist's filters."""
    return (f"/case/{urllib.parse.quote(found.run_id, safe='')}/{urllib.parse.quote(found.case_key, safe='')}"
            f"{suffix}{filter_query(chosen)}")


def state_badge(state: str, corrected_class: str | None = None) -> str:
    css = state if state in (CONFIRMED, DISMISSED, UNSURE) else ""
    text = state if not corrected_class else f"{state}: {corrected_class}"
    return f"<span class=\"state {css}\">{esc(text)}</span>"


def options(values, chosen: str | None, empty: str) -> str:
    items = [f"<option value=\"\">{esc(empty)}</option>"]
    items += [f"<option value=\"{esc(value)}\"{' selected' if value == chosen else ''}>{esc(value)}</option>"
              for value in values]
    return "".join(items)


def filters_form(chosen: WorklistFilter) -> str:
    return (f"<form class=\"filters\" method=\"get\" action=\"/\">"
            f"<label>from<input type=\"date\" name=\"from\" value=\"{esc(chosen.dates.first or '')}\"></label>"
            f"<label>to<input type=\"date\" name=\"to\" value=\"{esc(chosen.dates.last or '')}\"></label>"
            f"<label>class<select name=\"class\">{options(CLASS_NAMES, chosen.predicted_class, 'any')}</select>"
            f"</label><label>state<select name=\"state\">{options(STATES, chosen.state, 'any')}</select></label>"
            f"<button type=\"submit\">Show</button></form>")


def item_row(rank: int, found: Item, chosen: WorklistFilter) -> str:
    return (f"<tr class=\"item\" data-kind=\"{esc(found.kind)}\"><td class=\"num\">{rank}</td>"
            f"<td class=\"num prob\">{esc(number(found.tumor_probability, 3))}</td>"
            f"<td>{esc(found.predicted_class or '–')}</td><td>{state_badge(found.state, found.corrected_class)}</td>"
            f"<td>{esc(found.kind)}</td><td class=\"key\"><a class=\"case-link\" href=\"{esc(case_url(found, chosen))}\">"
            f"{esc(found.label)}</a></td><td>{esc(study_date(found.study_date))}</td>"
            f"<td>{esc(found.modality or '–')}</td><td class=\"num\">{found.slices}</td>"
            f"<td>{esc(found.run_date)}</td></tr>")


def cases_table(items: list[Item], chosen: WorklistFilter) -> str:
    if not items:
        return "<h2>Flagged cases</h2><p class=\"empty\">No flagged case matches.</p>"
    rows = "".join(item_row(rank, found, chosen) for rank, found in enumerate(items, 1))
    return (f"<h2>Flagged cases ({len(items)})</h2><section class=\"panel\"><table class=\"list\" id=\"worklist\">"
            f"<tr><th>#</th><th>tumor p</th><th>class</th><th>state</th><th>kind</th><th>series key / file</th>"
            f"<th>study date</th><th>modality</th><th>slices</th><th>night</th></tr>{rows}</table></section>")


def unfamiliar_row(row: dict) -> str:
    probability, threshold = row[col.TUMOR_PROBABILITY], row.get(col.THRESHOLD)
    high = probability is not None and threshold is not None and probability >= threshold
    shown = (f"<b class=\"prob\">{esc(number(probability, 3))}</b> &ge; threshold" if high
             else esc(number(probability, 3)))
    return (f"<tr class=\"unfamiliar\"><td class=\"num\">{shown}</td><td>{esc(row[col.PREDICTED_CLASS] or '–')}</td>"
            f"<td class=\"num\">{esc(number(row[col.OOD_SCORE], 2))}</td>"
            f"<td class=\"key\">{esc(row.get('file_label') or '–')} #{esc(str(row[col.FRAME_INDEX]))}</td>"
            f"<td>{esc(study_date(row[col.STUDY_DATE]))}</td><td>{esc(row[col.RUN_DATE])}</td></tr>")


def unfamiliar_table(rows: list[dict]) -> str:
    title = "Unfamiliar inputs (neither tumor nor no tumor: read them yourself)"
    if not rows:
        return f"<h2>{esc(title)}</h2><p class=\"empty\">None on these nights.</p>"
    return (f"<h2>{esc(title)} ({len(rows)})</h2><section class=\"panel\"><p class=\"note\">Highest tumor "
            f"probability first; one at or above its night's threshold would have been flagged.</p>"
            f"<table class=\"list\" id=\"unfamiliar\"><tr><th>tumor probability</th><th>class</th>"
            f"<th>unfamiliarity</th><th>file #frame</th><th>study date</th><th>night</th></tr>"
            f"{''.join(unfamiliar_row(row) for row in rows)}</table></section>")


UPLOAD_PANEL = (
    "<h2>Score a file now</h2><section class=\"panel\"><p class=\"note\">A DICOM, JPEG or PNG file, or a zip of one "
    "series: scored as the nightly job scores it, stored nowhere. At most {limit} MB.</p>"
    "<form id=\"upload\"><input type=\"file\" id=\"upload-file\" accept=\".dcm,.dicom,.jpg,.jpeg,.png,.zip\"> "
    "<button type=\"submit\">Score</button></form><div id=\"upload-result\" aria-live=\"polite\"></div></section>")

WORKLIST_KEYS = ("<p class=\"note\"><kbd>j</kbd>/<kbd>k</kbd> or <kbd>&darr;</kbd>/<kbd>&uarr;</kbd> move through "
                 "the list, <kbd>Enter</kbd> opens a case.</p>")


def worklist_page(items: list[Item], unfamiliar: list[dict], chosen: WorklistFilter, reviewer: str,
                  nights: str, upload_limit_mb: float) -> str:
    body = (f"<nav class=\"toolbar\">{filters_form(chosen)}</nav>{WORKLIST_KEYS}{cases_table(items, chosen)}"
            f"{unfamiliar_table(unfamiliar)}{UPLOAD_PANEL.format(limit=f'{upload_limit_mb:g}')}")
    return document("Review worklist", f"{nights}. Reviewer: {reviewer}. Most suspicious first.", body)


def verdict_button(action: str, field: str, value: str, label: str, key: str) -> str:
    return (f"<form method=\"post\" action=\"{esc(action)}\"><input type=\"hidden\" name=\"{field}\" "
            f"value=\"{esc(value)}\"><button type=\"submit\" id=\"{field}-{esc(value)}\" data-key=\"{esc(key)}\">"
            f"{esc(label)} <kbd>{esc(key)}</kbd></button></form>")


def verdict_bar(action: str) -> str:
    buttons = [verdict_button(action, "verdict", verdict, label, key) for verdict, label, key in (
        (CONFIRMED, "Confirm", "c"), (DISMISSED, "Dismiss", "d"), (UNSURE, "Unsure", "u"),
        (REOPENED, "Reopen", "r"))]
    buttons += [verdict_button(action, "corrected_class", name, f"It is {name}", str(index))
                for index, name in enumerate(CLASS_NAMES, 1)]
    return f"<div class=\"verdicts\">{''.join(buttons)}</div>"


def link(found: Item | None, chosen: WorklistFilter, rel: str, text: str) -> str:
    if found is None:
        return f"<span class=\"note\">{esc(text)}</span>"
    return f"<a id=\"{rel}\" rel=\"{rel}\" href=\"{esc(case_url(found, chosen))}\">{esc(text)}</a>"


def case_page(view: CaseView, current: Item, previous: Item | None, following: Item | None,
              chosen: WorklistFilter, reviewer: str) -> str:
    action = case_url(current, chosen, "/verdict")
    state = state_badge(current.state, current.corrected_class)
    by = f" by {esc(current.reviewer)}" if current.reviewer else ""
    nav = (f"<nav class=\"toolbar\"><a id=\"worklist\" href=\"/{esc(filter_query(chosen))}\">&larr; Worklist</a>"
           f"{link(previous, chosen, 'prev', '‹ previous (k)')}{link(following, chosen, 'next', 'next (j) ›')}"
           f"<span>State: <span id=\"state\">{state}</span>{by}</span></nav>")
    keys = ("<p class=\"note\"><kbd>j</kbd>/<kbd>k</kbd> or <kbd>&rarr;</kbd>/<kbd>&larr;</kbd> next and previous "
            "case, <kbd>c</kbd> confirm, <kbd>d</kbd> dismiss, <kbd>u</kbd> unsure, <kbd>1</kbd>-<kbd>4</kbd> the "
            "type (no tumor dismisses), <kbd>r</kbd> reopen, <kbd>Esc</kbd> the worklist.</p>")
    title = f"{view.kind.capitalize()} {current.label}"
    return document(title, f"Night of {current.run_date}, run {current.run_id}. Reviewer: {reviewer}.",
                    nav + verdict_bar(action) + keys + view.card())


def message_page(heading: str, text: str) -> str:
    return document(heading, "", f"<p>{esc(text)}</p><p><a href=\"/\">Worklist</a></p>")
