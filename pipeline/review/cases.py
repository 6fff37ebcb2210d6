"""One case of the worklist, drawn as the morning report draws it: a flagged series' slices in order (the deciding
slice framed, the unfamiliar, skipped and unread slices dashed and named), the deciding slice large beside its
heat map (LayerCAM) and, under it, the report's caption of what the heat map is worth (how often its peak was
measured to fall on the tumor), the class probabilities, why the series was decided where it was, and the model with
its operating point.

In: the committed tables (``pipeline.report.morning``'s queries of one run), the case key; out: a ``CaseView`` whose
pictures are drawn (``pipeline.report.images``) and whose heat map the caller adds (``add_heat_map``: the heat map
model runs elsewhere, TensorFlow never loads where pages are built). Files are named by reference, never by path.
"""

from __future__ import annotations

import dataclasses

import duckdb
import numpy as np

from model import registry
from model.preprocessing import PreprocessConfig
from pipeline.report import morning
from pipeline import schema as col
from pipeline.report.cases import case_card
from pipeline.report.html import model_text
from pipeline.report.images import Case, SliceReader, draw_thumbnails, heat_map_caption, png_uri
from pipeline.review.worklist import IMAGE_KIND, SERIES_KIND, image_key


class CaseNotFound(LookupError):
    """No flagged case of that key in that run."""


@dataclasses.dataclass
class CaseView:
    """A case with its run, the model that scored it, and its pictures."""

    kind: str
    run: dict
    case: Case
    info: registry.ModelInfo | None
    heat_note: str

    @property
    def predicted_class(self) -> str | None:
        return self.case.row[col.PREDICTED_CLASS]

    @property
    def tumor_probability(self) -> float | None:
        return self.case.row[col.TUMOR_PROBABILITY]

    def card(self) -> str:
        """The report's case card and the model's sentence, as HTML."""
        return case_card(1, self.case, self.heat_note) + model_text(self.run, self.info)


def find_case(connection: duckdb.DuckDBPyConnection, run: dict, kind: str, case_key: str,
              names: morning.FileNames) -> Case:
    """The flagged series or image of ``run`` known by ``case_key``, as the report builds it."""
    if kind == SERIES_KIND:
        for row in morning.flagged_series(connection, run):
            if row[col.SERIES_KEY] == case_key:
                case = morning.series_case(row)
                case.set_aside = morning.set_aside_slices(connection, run).get(case_key, {})
                return case
    else:
        for row in names.label(morning.flagged_images(connection, run)):
            if image_key(row[col.SOURCE_URI], row[col.FRAME_INDEX] or 0, names.key, run[col.RUN_ID]) == case_key:
                return morning.image_case(row)
    raise CaseNotFound(f"no flagged {kind} {case_key} in run {run[col.RUN_ID]}")


def load_case(connection: duckdb.DuckDBPyConnection, run_id: str, case_key: str, key: bytes | None) -> CaseView:
    """The case with its thumbnails drawn (slices re-read from their files as scoring read them)."""
    try:
        run = morning.run_row(connection, run_id)
    except morning.ReportError as error:
        raise CaseNotFound(str(error)) from None
    kind = IMAGE_KIND if case_key.startswith(("f-", "r-")) else SERIES_KIND
    names = morning.FileNames(key, run_id)
    case = find_case(connection, run, kind, case_key, names)
    info, heat_note = morning.run_model(run)
    preprocessing = info.preprocessing if info else PreprocessConfig()
    draw_thumbnails(case, SliceReader(preprocessing, locate=names.locate, name=names.reference))
    return CaseView(kind, run, case, info, heat_note)


def add_heat_map(view: CaseView, overlay: np.ndarray | None) -> None:
    """The deciding slice's heat map blended over it (None: none could be drawn), captioned as the report captions
    it: what the map shows and how often its peak fell on the tumor, as measured for the run's model."""
    view.case.heat_map = None if overlay is None else png_uri(overlay)
    view.case.heat_map_caption = heat_map_caption(view.info) if overlay is not None and view.info else ""
