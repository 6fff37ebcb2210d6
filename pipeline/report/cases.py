"""The morning report's lists of cases: each flagged series or image as a card (its class and tumor probability,
the deciding slice beside its heat map (LayerCAM, captioned with how often its peak was measured on the tumor), its
pseudonymous keys and study date, the class probabilities as bars, why the series was decided where it was in
words, thumbnails of its slices in order with the deciding slice framed and the slices set aside dashed and named),
the cases beyond those given pictures as one line each, and the table of unfamiliar inputs with each one's tumor
probability. Files appear as their reference and file name. In: cases with their pictures drawn
(``pipeline.report.images``); out: HTML sections.
"""

from __future__ import annotations

from model.labels import CLASS_NAMES
from pipeline import schema as col
from pipeline.report.html import esc, number, study_date
from pipeline.report.images import FILE_LABEL, WITHHELD, WITHHELD_NOTE, Case, png_uri, shown_slices
from pipeline.scoring.series import SERIES_RULE


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
        items = [("file", row.get(FILE_LABEL)), ("format", row[col.FILE_FORMAT]),
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
        return figures + (f"<figure><img src=\"{case.heat_map}\" alt=\"LayerCAM heat map\"><figcaption>"
                          f"{esc(case.heat_map_caption)}</figcaption></figure>")
    return figures + f"<p class=\"note\">{esc(heat_note)}</p>"


def slice_probability(case: Case, index: int) -> float | None:
    return case.slice_probabilities[index] if index < len(case.slice_probabilities) else None


def strip_figure(case: Case, index: int) -> str:
    """One thumbnail: the deciding slice framed red, a slice set aside dashed and named so."""
    picture = picture_html(case.thumbnails.get(index), f"alt=\"slice {index + 1}\"",
                           "<span class=\"missing\">withheld</span>", "<span class=\"missing\">n/a</span>")
    caption = f"{index + 1} · {esc(number(slice_probability(case, index), 2))}"
    if index == case.deciding:
        return f"<figure class=\"deciding\">{picture}<figcaption>{caption}</figcaption></figure>"
    if index in case.set_aside:
        reason = esc(case.set_aside[index])
        return (f"<figure class=\"set-aside\" title=\"set aside: {reason}\">{picture}<figcaption>{caption}<br>"
                f"<span class=\"aside\">{reason}</span></figcaption></figure>")
    return f"<figure>{picture}<figcaption>{caption}</figcaption></figure>"


def thumbnail_strip(case: Case) -> str:
    if len(case.slices) < 2:
        return ""
    shown = shown_slices(case)
    figures = [strip_figure(case, index) for index in shown]
    note = "" if len(shown) == len(case.slices) else (
        f"<p class=\"note\">Slices {shown.start + 1}-{shown.stop} of {len(case.slices)}, around the deciding one.</p>")
    if case.withheld and case.thumbnails.get(case.deciding) != WITHHELD:
        note += f"<p class=\"note\">{esc(WITHHELD_NOTE)}</p>"
    if any(index in case.set_aside for index in shown):
        note += ("<p class=\"note\">Red frame: the deciding slice. Dashed and faded: set aside (unfamiliar, "
                 "skipped or not read), so it took no part in the decision.</p>")
    return f"{note}<div class=\"strip\">{''.join(figures)}</div>"


def slices_named(case: Case, indices: list[int]) -> str:
    named = [f"slice {index + 1} ({number(slice_probability(case, index), 2)})" for index in indices[:5]]
    more = f" and {len(indices) - 5} more" if len(indices) > 5 else ""
    return (", ".join(named[:-1]) + " and " + named[-1] if len(named) > 1 else named[0]) + more


def deciding_pair_words(case: Case, taking_part: list[int]) -> str:
    """Which slices decided the series, by the neighbouring-slices rule (``pipeline.scoring.series``)."""
    deciding, series_probability = case.deciding, case.row[col.TUMOR_PROBABILITY]
    own = number(slice_probability(case, deciding), 2)
    if len(taking_part) < 2 or deciding not in taking_part:
        return f"Decided on slice {deciding + 1} ({own}), the only slice that took part."
    position = taking_part.index(deciding)
    neighbours = [taking_part[k] for k in (position - 1, position + 1) if 0 <= k < len(taking_part)]
    partner = max(neighbours, key=lambda index: slice_probability(case, index) or 0.0)
    return (f"Decided on slice {deciding + 1} ({own}) with its neighbour, slice {partner + 1} "
            f"({number(slice_probability(case, partner), 2)}): a series takes the lower probability of its most "
            f"suspicious pair of neighbouring slices, here {number(series_probability, 2)}.")


def above(case: Case, index: int, level: float) -> bool:
    """Whether slice ``index`` shows a higher probability than ``level`` at the two digits the report prints."""
    return round(slice_probability(case, index) or 0.0, 2) > round(level, 2)


def neighbours_named(case: Case, index: int, taking_part: list[int]) -> str:
    position = taking_part.index(index)
    values = [number(slice_probability(case, taking_part[k]), 2) for k in (position - 1, position + 1)
              if 0 <= k < len(taking_part)]
    return f" (its neighbours: {', '.join(values)})" if values else ""


def decision_words(case: Case) -> str:
    """Why a series was decided where it was: the deciding pair, the set-aside slices that scored higher, and the
    slices that scored higher alone (one slice cannot flag a series)."""
    if len(case.slices) < 2 or SERIES_RULE != "adjacent_pair":
        return ""
    probability = case.row[col.TUMOR_PROBABILITY] or 0.0
    scored = [index for index in range(len(case.slices)) if slice_probability(case, index) is not None]
    taking_part = [index for index in scored if index not in case.set_aside]
    words = [deciding_pair_words(case, taking_part)]
    by_probability = sorted(scored, key=lambda index: -slice_probability(case, index))
    higher_aside = [index for index in by_probability if index in case.set_aside and above(case, index, probability)]
    if higher_aside:
        verb = "was" if len(higher_aside) == 1 else "were"
        words.append(f"{slices_named(case, higher_aside).capitalize()} {verb} set aside as unfamiliar (unlike the "
                     f"images the model learnt from) and took no part: read "
                     f"{'it' if len(higher_aside) == 1 else 'them'} yourself.")
    own = slice_probability(case, case.deciding) or 0.0
    alone = [index for index in by_probability if index in taking_part and above(case, index, own)]
    for index in alone[:3]:
        words.append(f"{slices_named(case, [index]).capitalize()} scored higher, but not with a neighbour"
                     f"{neighbours_named(case, index, taking_part)}: one slice alone does not decide a series.")
    return f"<p class=\"decision\">{esc(' '.join(words))}</p>"


def case_card(rank: int, case: Case, heat_note: str) -> str:
    row = case.row
    return (f"<article class=\"case\"><h3><span class=\"rank\">#{rank}</span>{esc(row[col.PREDICTED_CLASS] or '–')}"
            f" · <span class=\"prob\">tumor probability {esc(number(row[col.TUMOR_PROBABILITY], 3))}</span></h3>"
            f"<div class=\"body\">{deciding_figures(case, heat_note)}{facts(case)}</div>{decision_words(case)}"
            f"{thumbnail_strip(case)}"
            f"</article>")


def case_line(rank: int, case: Case) -> str:
    row = case.row
    name = row.get(col.SERIES_KEY) or row.get(FILE_LABEL) or "–"
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


def unfamiliar_line(row: dict, uri: str | None, threshold: float | None) -> str:
    """One unfamiliar input: its picture, its tumor probability (marked when at or above the threshold), class,
    unfamiliarity score, file reference and name, series key and study date."""
    picture = picture_html(uri, "alt=\"unfamiliar input\" width=\"72\" height=\"72\"", "withheld: burned-in text",
                           "–")
    probability = row[col.TUMOR_PROBABILITY]
    high = probability is not None and threshold is not None and probability >= threshold
    shown = f"<b class=\"prob\">{esc(number(probability, 3))}</b> &ge; threshold" if high else esc(
        number(probability, 3))
    marked = ' class="high"' if high else ""
    return (f"<tr{marked}><td>{picture}</td><td class=\"num tumor-p\">{shown}</td>"
            f"<td>{esc(row[col.PREDICTED_CLASS] or '–')}</td>"
            f"<td class=\"num\">{esc(number(row[col.OOD_SCORE], 2))}</td>"
            f"<td class=\"key\">{esc(row.get(FILE_LABEL) or '–')} #{esc(str(row[col.FRAME_INDEX]))}</td>"
            f"<td class=\"key\">{esc(row[col.SERIES_KEY] or '–')}</td>"
            f"<td>{esc(study_date(row[col.STUDY_DATE]))}</td></tr>")


def unfamiliar_section(rows: list[dict], thumbnails: list[str | None], threshold: float | None = None) -> str:
    """The unfamiliar inputs, highest tumor probability first, each with its tumor probability beside it."""
    title = "Unfamiliar inputs (counted as neither tumor nor no tumor: read them yourself)"
    if not rows:
        return f"<h2>{esc(title)}</h2><p class=\"empty\">None tonight.</p>"
    lines = [unfamiliar_line(row, thumbnails[index] if index < len(thumbnails) else None, threshold)
             for index, row in enumerate(rows)]
    note = ("<p class=\"note\">Highest tumor probability first. The model is not sure of these images (the "
            "unfamiliarity score is above what its training images reached), so none is flagged: one at or above "
            f"the threshold ({esc(number(threshold, 2))}) would have been, read those first.</p>")
    if len(thumbnails) < len(rows):
        note += f"<p class=\"note\">Pictures for the first {len(thumbnails)}.</p>"
    return (f"<h2>{esc(title)} ({len(rows)})</h2><section class=\"panel\">{note}<table><tr><th></th>"
            f"<th>tumor probability</th><th>class</th><th>unfamiliarity</th><th>file #frame</th><th>series key</th>"
            f"<th>study date</th></tr>{''.join(lines)}</table></section>")
