"""The morning report's lists of cases: each flagged series or image as a card (its class and tumor probability,
the deciding slice beside its Grad-CAM heat map, its pseudonymous keys and study date, the class probabilities as
bars, thumbnails of its slices in order), the cases beyond those given pictures as one line each, and the table of
unfamiliar inputs. In: cases with their pictures drawn (``pipeline.report_images``); out: HTML sections.
"""

from __future__ import annotations

from model.labels import CLASS_NAMES
from pipeline import schema as col
from pipeline.report_html import esc, number, study_date
from pipeline.report_images import WITHHELD, WITHHELD_NOTE, Case, png_uri, shown_slices


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


def picture_html(uri: str | None, attributes: str, withheld: str, missing: str) -> str:
    """A drawn slice as an image, or what stands in its place: ``withheld`` (burned-in text) or ``missing``."""
    if uri == WITHHELD:
        return withheld
    return f"<img src=\"{uri}\" {attributes}>" if uri else missing


def deciding_figures(case: Case, heat_note: str) -> str:
    image = case.thumbnails.get(case.deciding)
    if image == WITHHELD:
        return f"<p class=\"empty\">{esc(WITHHELD_NOTE)}</p>"
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
        picture = picture_html(case.thumbnails.get(index), f"alt=\"slice {index + 1}\"",
                               "<span class=\"missing\">withheld</span>", "<span class=\"missing\">n/a</span>")
        mark = ' class="deciding"' if index == case.deciding else ""
        figures.append(f"<figure{mark}>{picture}<figcaption>"
                       f"{index + 1} · {esc(number(probability, 2))}</figcaption></figure>")
    note = "" if len(shown) == len(case.slices) else (
        f"<p class=\"note\">Slices {shown.start + 1}-{shown.stop} of {len(case.slices)}, around the deciding one.</p>")
    if case.withheld and case.thumbnails.get(case.deciding) != WITHHELD:
        note += f"<p class=\"note\">{esc(WITHHELD_NOTE)}</p>"
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


def cases_section(title: str, cases: list[Case], pictured: int, heat_note: str, nothing: str) -> str:
    """A titled list of cases: the first ``pictured`` as cards, the rest one line each (or ``nothing``)."""
    if not cases:
        return f"<h2>{esc(title)}</h2><p class=\"empty\">{esc(nothing)}</p>"
    cards = "".join(case_card(rank, case, heat_note) for rank, case in enumerate(cases[:pictured], 1))
    rest = cases[pictured:]
    if rest:
        lines = "".join(case_line(rank, case) for rank, case in enumerate(rest, pictured + 1))
        cards += (f"<section class=\"panel\"><p class=\"note\">{len(rest)} more, without pictures (the report "
                  f"shows pictures for the first {pictured}):</p><table><tr><th>#</th><th>tumor p</th>"
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
        picture = picture_html(uri, "alt=\"unfamiliar input\" width=\"72\" height=\"72\"",
                               "withheld: burned-in text", "–")
        lines.append(f"<tr><td>{picture}</td><td class=\"num\">{esc(number(row[col.OOD_SCORE], 2))}</td>"
                     f"<td class=\"key\">{esc(row[col.SOURCE_URI])} #{esc(str(row[col.FRAME_INDEX]))}</td>"
                     f"<td class=\"key\">{esc(row[col.SERIES_KEY] or '–')}</td>"
                     f"<td>{esc(study_date(row[col.STUDY_DATE]))}</td></tr>")
    note = "" if len(thumbnails) >= len(rows) else f"<p class=\"note\">Pictures for the first {len(thumbnails)}.</p>"
    return (f"<h2>{esc(title)} ({len(rows)})</h2><section class=\"panel\">{note}<table><tr><th></th>"
            f"<th>score</th><th>file #frame</th><th>series key</th><th>study date</th></tr>{''.join(lines)}</table>"
            f"</section>")
