"""The morning report's charts, as inline SVG (no script, no font from anywhere): scored images per predicted class
with the unfamiliar inputs apart, and the histogram of tumor probabilities against the run's threshold. In: counts
from the committed tables and the run's row; out: an HTML section.
"""

from __future__ import annotations

from pipeline import schema as col
from pipeline.report.html import esc

BINS = 20  # of the tumor-probability histogram


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
