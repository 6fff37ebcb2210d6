"""The worklist: a night's (or a date range's) flagged series and images, most suspicious first, each with its review
state, and the unfamiliar inputs of those nights in a list of their own.

In: the committed results tables (``pipeline.results.views``, the flagged query of ``jobs.query flagged``) and the verdicts
(``pipeline.review.verdicts``); out: ``Item`` rows. A series is known by its series key; an image outside any series
by its file reference (``pipeline.sources.paths``: keyed with the pseudonym key, else derived from its run), never by its
path.
"""

from __future__ import annotations

import dataclasses

import duckdb

from pipeline.report import morning
from pipeline.results import queries
from pipeline.sources import paths
from pipeline import schema as col
from pipeline.review.verdicts import CASE_KINDS, NOT_REVIEWED, STATES, state_of

SERIES_KIND, IMAGE_KIND = CASE_KINDS


@dataclasses.dataclass(frozen=True)
class WorklistFilter:
    """Which cases to list: run dates (none: the latest night), the model's class, the review state."""

    dates: queries.DateRange = queries.DateRange()
    predicted_class: str | None = None
    state: str | None = None

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in STATES:
            raise ValueError(f"a review state is one of {', '.join(STATES)}, not {self.state!r}")


@dataclasses.dataclass(frozen=True)
class Item:
    """One flagged case on the worklist."""

    kind: str
    run_id: str
    run_date: str
    case_key: str
    tumor_probability: float
    predicted_class: str | None
    study_date: str | None
    modality: str | None
    slices: int
    label: str  # what the list shows: the series key, or the image's reference and file name
    state: str = NOT_REVIEWED
    corrected_class: str | None = None
    reviewer: str | None = None


def image_key(uri: str, frame_index: int, key: bytes | None, run_id: str) -> str:
    """An image's case key: its file reference, and its frame when not the first."""
    reference = paths.file_reference(uri, key, run_id)
    return reference if not frame_index else f"{reference}:{frame_index}"


def item(row: dict, key: bytes | None) -> Item:
    uri, frame = row["deciding_source_uri"], row["deciding_frame_index"] or 0
    if row["kind"] == SERIES_KIND:
        case_key, label = row[col.SERIES_KEY], row[col.SERIES_KEY]
    else:
        case_key = image_key(uri, frame, key, row[col.RUN_ID])
        label = f"{paths.file_reference(uri, key, row[col.RUN_ID])} · {paths.file_name(uri)}"
    return Item(row["kind"], row[col.RUN_ID], row[col.RUN_DATE], case_key, row[col.TUMOR_PROBABILITY],
                row[col.PREDICTED_CLASS], row[col.STUDY_DATE], row[col.MODALITY], row[col.SLICES], label)


def with_state(found: Item, latest: dict[tuple[str, str], dict]) -> Item:
    verdict = latest.get((found.run_id, found.case_key))
    if verdict is None:
        return found
    return dataclasses.replace(found, state=state_of(verdict["verdict"]), corrected_class=verdict["corrected_class"],
                               reviewer=verdict["reviewer"])


def flagged_items(connection: duckdb.DuckDBPyConnection, chosen: WorklistFilter, key: bytes | None,
                  latest: dict[tuple[str, str], dict]) -> list[Item]:
    """The flagged cases of the chosen nights, most suspicious first, with their states, filtered by class and
    state (``latest``: each case's latest verdict)."""
    rows = queries.flagged(connection, queries.FlaggedFilter(chosen.dates, chosen.predicted_class)).to_pylist()
    items = [with_state(item(row, key), latest) for row in rows]
    return [found for found in items if chosen.state is None or found.state == chosen.state]


def runs_in(connection: duckdb.DuckDBPyConnection, dates: queries.DateRange) -> list[dict]:
    """The complete runs of the chosen nights, latest first."""
    where, parameters = dates.where(connection)
    return morning.records(connection, f"SELECT * FROM runs WHERE {where} ORDER BY {col.FINISHED_AT} DESC",
                          parameters)


def unfamiliar_items(connection: duckdb.DuckDBPyConnection, dates: queries.DateRange,
                     key: bytes | None) -> list[dict]:
    """The unfamiliar inputs of the chosen nights, highest tumor probability first, each labelled by its file
    reference and name, with its run's flag threshold."""
    rows = []
    for run in runs_in(connection, dates):
        labelled = morning.FileNames(key, run[col.RUN_ID]).label(morning.unfamiliar_inputs(connection, run))
        rows += [{**row, col.THRESHOLD: run[col.THRESHOLD]} for row in labelled]
    return sorted(rows, key=lambda row: -(row[col.TUMOR_PROBABILITY] or 0.0))


def neighbours(items: list[Item], run_id: str, case_key: str) -> tuple[Item | None, Item | None]:
    """The cases before and after one case in a worklist (None at either end, or when it is not listed)."""
    positions = [index for index, found in enumerate(items) if (found.run_id, found.case_key) == (run_id, case_key)]
    if not positions:
        return None, None
    index = positions[0]
    return (items[index - 1] if index > 0 else None), (items[index + 1] if index + 1 < len(items) else None)
