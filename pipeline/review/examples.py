"""Radiologists' verdicts as labelled training examples (``python -m jobs.retrain --reviews RESULTS_DIR``).

In: a results output's ``reviews`` table (``pipeline.review.verdicts``) and its committed ``series`` and
``predictions`` tables; out: one ``ReviewedImage`` per labelled slice (the file to read it from, its frame, its
label, its source ``reviews/<results folder name>``) and a record of the cases that gave none, and why. The slices
are read later, by the retraining run, through the decoder and preprocessing scoring uses (``model.data``).

What a verdict is worth:

- A case (one run's series or image) counts by its latest verdict, as the app shows it; a case reopened with no
  verdict after is not reviewed.
- A confirmed flag is a tumor of the class the reviewer named, else of the model's class; a tumor of unknown type
  where the model's class was no tumor and the reviewer named none (a flag can be raised below an even tumor
  probability). A dismissed flag is no tumor. An unsure case, or one not reviewed, gives no example.
- An image case labels its image (its frame). A series case labels the slices below (``series_images``).
- A slice reached by several cases (a series flagged on two nights, two results folders of one archive) takes the
  label of the latest verdict among them that gives one.

A case is found in the rows of the run its verdict names: a date screened again since (its rows replaced) no longer
holds it, and it is counted as not found. Images outside a series are known by their file reference, keyed with the
pseudonym key (``f-``), so reading their verdicts needs the key the screening used; pseudonymised folders are found
again with it too. Files are named in logs by that reference, never by their path.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import logging

from model.data import DatasetError, LabelledImage
from model.labels import CLASS_NAMES, NO_TUMOR, TUMOR_UNKNOWN_TYPE
from model.sources import reviews_source
from pipeline.results import tables, views
from pipeline import schema as col
from pipeline.report.morning import FileNames, records
from pipeline.review.verdicts import (CASE_KEY, CASE_KIND, CONFIRMED, CORRECTED_CLASS, DISMISSED, REVIEWED_AT,
                                      VERDICT, VerdictLog, state_of)
from pipeline.review.worklist import IMAGE_KIND, SERIES_KIND, image_key

logger = logging.getLogger(__name__)

NOT_FOUND = "case not in the results tables"  # its run's rows were replaced, or (an image) the key is not the run's
NOT_LOCATED = "pseudonymised folders not found"


@dataclasses.dataclass(frozen=True)
class ReviewedImage:
    """One slice labelled by a verdict: where to read it (its real path), which frame, the label, its source, how a
    log line names it (its file reference) and when the verdict was given."""

    uri: str
    frame: int
    label: str
    source: str
    reference: str
    reviewed_at: datetime.datetime

    def labelled(self) -> LabelledImage:
        return LabelledImage(self.uri, self.label, source=self.source)


@dataclasses.dataclass
class ReviewedExamples:
    """The labelled slices of one or more results outputs, and what their verdicts came to (``record``)."""

    images: list[ReviewedImage]
    record: dict


def verdict_label(verdict: str | None, corrected_class: str | None, predicted_class: str | None) -> str | None:
    """The label a case's latest verdict gives its slices (module docstring); None for no example."""
    if verdict == DISMISSED:
        return NO_TUMOR
    if verdict != CONFIRMED:
        return None
    for named in (corrected_class, predicted_class):
        if named in CLASS_NAMES and named != NO_TUMOR:
            return named
    return TUMOR_UNKNOWN_TYPE


def series_images(label: str, deciding: tuple[str, int], scored: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The slices a series verdict labels. Dismissed (no tumor): every slice that was scored (classified, not
    unfamiliar), since the reviewer found no tumor anywhere in the series. Confirmed: only the deciding slice. A
    tumor shows on some slices of a series, not all: the slices above and below it are tumor-free, so giving the
    whole series the class would teach the model to call tumor-free slices tumors. The deciding slice is the one the
    reviewer saw large beside its heat map, and the one whose class the verdict confirmed; its neighbours are likely
    but not known to show the tumor."""
    return list(scored) if label == NO_TUMOR else [deciding]


def latest_cases(rows: list[dict]) -> list[dict]:
    """Each case's latest verdict (``rows`` oldest first, as ``VerdictLog.rows`` gives them)."""
    latest = {}
    for row in rows:
        latest[(row[col.RUN_ID], row[CASE_KEY])] = row
    return list(latest.values())


def series_slices(connection, run: tuple[str, str]) -> dict[str, tuple[tuple[str, int], list[tuple[str, int]]]]:
    """Series key -> (its deciding slice, its scored slices) in one run (``run``: its date and id)."""
    found = {row[col.SERIES_KEY]: row for row in records(connection, f"""
        SELECT {col.SERIES_KEY}, {col.ORDERED_SOURCE_URIS}[{col.MOST_SUSPICIOUS_SLICE_INDEX} + 1] AS uri,
               {col.ORDERED_FRAME_INDICES}[{col.MOST_SUSPICIOUS_SLICE_INDEX} + 1] AS frame
        FROM series WHERE {col.RUN_DATE} = ? AND {col.RUN_ID} = ?""", list(run))}
    scored = collections.defaultdict(list)
    for row in records(connection, f"""
            SELECT {col.SERIES_KEY}, {col.SOURCE_URI}, {col.FRAME_INDEX} FROM predictions
            WHERE {col.RUN_DATE} = ? AND {col.RUN_ID} = ? AND {col.SERIES_KEY} IS NOT NULL
                  AND {col.STATUS} = '{col.STATUS_OK}' AND NOT coalesce({col.OOD}, false)
            ORDER BY {col.SOURCE_URI}, {col.FRAME_INDEX}""", list(run)):
        scored[row[col.SERIES_KEY]].append((row[col.SOURCE_URI], row[col.FRAME_INDEX] or 0))
    return {key: ((row["uri"], row["frame"] or 0), scored[key]) for key, row in found.items() if row["uri"]}


def image_cases(connection, run: tuple[str, str], key: bytes | None) -> dict[str, tuple[str, int]]:
    """Image case key -> (source URI, frame) for the images outside any series that one run scored."""
    rows = records(connection, f"""
        SELECT {col.SOURCE_URI}, {col.FRAME_INDEX} FROM predictions
        WHERE {col.RUN_DATE} = ? AND {col.RUN_ID} = ? AND {col.SERIES_KEY} IS NULL
              AND {col.STATUS} = '{col.STATUS_OK}'""", list(run))
    return {image_key(row[col.SOURCE_URI], row[col.FRAME_INDEX] or 0, key, run[1]):
            (row[col.SOURCE_URI], row[col.FRAME_INDEX] or 0) for row in rows}


def case_slices(connection, cases: list[dict], key: bytes | None) -> dict[tuple[str, str], list[tuple[str, int]]]:
    """(run id, case key) -> the (source URI, frame) of each slice its verdict labels; a case not found is absent."""
    found = {}
    for run in sorted({(case[col.RUN_DATE], case[col.RUN_ID]) for case in cases}):
        of_run = [case for case in cases if (case[col.RUN_DATE], case[col.RUN_ID]) == run]
        if any(case[CASE_KIND] == SERIES_KIND for case in of_run):
            series = series_slices(connection, run)
            for case in of_run:
                if case[CASE_KIND] == SERIES_KIND and case[CASE_KEY] in series:
                    deciding, scored = series[case[CASE_KEY]]
                    found[(run[1], case[CASE_KEY])] = series_images(case["label"], deciding, scored)
        if any(case[CASE_KIND] == IMAGE_KIND for case in of_run):
            images = image_cases(connection, run, key)
            found.update({(run[1], case[CASE_KEY]): [images[case[CASE_KEY]]] for case in of_run
                          if case[CASE_KIND] == IMAGE_KIND and case[CASE_KEY] in images})
    return found


def read_reviews(output: str, key: bytes | None) -> ReviewedExamples:
    """The slices one results output's verdicts label, and the record: its cases by state, and the cases (or
    slices) that gave no example and why."""
    if not tables.is_delta(output, tables.RUNS):
        raise DatasetError(f"--reviews {output}: no results tables there (a folder `python -m jobs.screen` wrote)")
    cases = latest_cases(VerdictLog(output).rows().to_pylist())
    states = collections.Counter(state_of(case[VERDICT]) for case in cases)
    labelled = [{**case, "label": label} for case in cases
                if (label := verdict_label(case[VERDICT], case[CORRECTED_CLASS], case[col.PREDICTED_CLASS]))]
    if key is None and any(case[CASE_KIND] == IMAGE_KIND and case[CASE_KEY].startswith("f-") for case in labelled):
        raise DatasetError(f"--reviews {output}: its image verdicts name files by keyed references; give the "
                           f"pseudonym key the screening used (--pseudonym-key-file, or PSEUDONYM_KEY)")
    slices = case_slices(views.connect(output), labelled, key) if labelled else {}
    source, dropped, images = reviews_source(output), collections.Counter(), []
    for case in labelled:
        found = slices.get((case[col.RUN_ID], case[CASE_KEY]))
        if found is None:
            dropped[NOT_FOUND] += 1
            continue
        names = FileNames(key, case[col.RUN_ID])
        for uri, frame in found:
            located = names.locate(uri)
            if located is None:
                dropped[NOT_LOCATED] += 1
                continue
            images.append(ReviewedImage(located, int(frame), case["label"], source, names.reference(uri),
                                        case[REVIEWED_AT]))
    record = {"cases": dict(sorted(states.items())), "dropped": dict(dropped)}
    logger.info("reviews of %s: %d case(s) by their latest verdict (%s); %d slice(s) labelled%s", source, len(cases),
                ", ".join(f"{count} {state}" for state, count in sorted(states.items())) or "none", len(images),
                "".join(f"; {count} {why}" for why, count in dropped.items()))
    return ReviewedExamples(images, record)


def latest_per_slice(images: list[ReviewedImage]) -> list[ReviewedImage]:
    """Each slice (file and frame) once, with its latest verdict's label and source."""
    latest = {}
    for image in sorted(images, key=lambda image: image.reviewed_at):
        latest[(image.uri, image.frame)] = image
    return sorted(latest.values(), key=lambda image: (image.uri, image.frame))


def read_all_reviews(outputs: tuple[str, ...], key: bytes | None) -> ReviewedExamples:
    """The labelled slices of every results output given, each slice once (its latest verdict in any of them)."""
    read = [read_reviews(output, key) for output in outputs]
    images = latest_per_slice([image for one in read for image in one.images])
    totals = {part: collections.Counter() for part in ("cases", "dropped")}
    for one in read:
        for part, counts in totals.items():
            counts.update(one.record[part])
    return ReviewedExamples(images, {"results": list(outputs), "slices_labelled": len(images),
                                     **{part: dict(sorted(counts.items())) for part, counts in totals.items()}})
