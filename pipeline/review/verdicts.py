"""Radiologists' verdicts: the ``reviews`` Delta table beside the results tables, append-only.

One row per verdict: the run and the case (a series key, or an image's file reference), what the reviewer said
(``confirmed``, ``dismissed``, ``unsure``, or ``reopened`` to take a verdict back), the corrected class when the
reviewer named another type, the reviewer's name as the app was configured, the time, and the model's answer the
reviewer saw (its class and tumor probability, so agreement is a query over this table alone). A row is never
updated or deleted: the current state of a case is its latest verdict (``reopened``: not reviewed again).
"""

from __future__ import annotations

import dataclasses
import datetime
import threading

import pyarrow as pa
import pyarrow.dataset as pads
from deltalake import write_deltalake

from infra import storage
from model.labels import CLASS_NAMES, NO_TUMOR
from pipeline.results import tables
from pipeline import schema as col

REVIEWS = "reviews"
CASE_KEY = "case_key"  # a series key, or an image's file reference (pipeline.sources.paths)
CASE_KIND = "case_kind"  # "series" or "image"
VERDICT = "verdict"
CORRECTED_CLASS = "corrected_class"
REVIEWER = "reviewer"
REVIEWED_AT = "reviewed_at"

CONFIRMED, DISMISSED, UNSURE, REOPENED = "confirmed", "dismissed", "unsure", "reopened"
VERDICTS = (CONFIRMED, DISMISSED, UNSURE, REOPENED)
NOT_REVIEWED = "not reviewed"
STATES = (NOT_REVIEWED, CONFIRMED, DISMISSED, UNSURE)  # what a case shows: its latest verdict, reopened as none
CASE_KINDS = ("series", "image")

REVIEWS_SCHEMA = pa.schema([
    pa.field(col.RUN_ID, pa.string()), pa.field(col.RUN_DATE, pa.string()), pa.field(CASE_KIND, pa.string()),
    pa.field(CASE_KEY, pa.string()), pa.field(VERDICT, pa.string()), pa.field(CORRECTED_CLASS, pa.string()),
    pa.field(REVIEWER, pa.string()), pa.field(REVIEWED_AT, pa.timestamp("us", tz="UTC")),
    pa.field(col.PREDICTED_CLASS, pa.string()), pa.field(col.TUMOR_PROBABILITY, pa.float32())])


class VerdictError(ValueError):
    """A verdict that cannot be recorded as given; the message is one sentence."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One reviewer's word on one case of one run, with the model's answer it was given on."""

    run_id: str
    run_date: str
    case_kind: str
    case_key: str
    verdict: str
    reviewer: str
    predicted_class: str | None
    tumor_probability: float | None
    corrected_class: str | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise VerdictError(f"a verdict is one of {', '.join(VERDICTS)}, not {self.verdict!r}")
        if self.case_kind not in CASE_KINDS:
            raise VerdictError(f"a case is a series or an image, not {self.case_kind!r}")
        if self.corrected_class is not None and self.corrected_class not in CLASS_NAMES:
            raise VerdictError(f"a corrected class is one of {', '.join(CLASS_NAMES)}, not {self.corrected_class!r}")
        if not self.reviewer.strip():
            raise VerdictError("a verdict needs the reviewer's name (--reviewer)")


def corrected(run_id: str, run_date: str, case_kind: str, case_key: str, corrected_class: str, reviewer: str,
              predicted_class: str | None, tumor_probability: float | None) -> Verdict:
    """The verdict of a reviewer who names the type: a tumor class confirms the finding, no tumor dismisses it."""
    verdict = DISMISSED if corrected_class == NO_TUMOR else CONFIRMED
    return Verdict(run_id, run_date, case_kind, case_key, verdict, reviewer, predicted_class, tumor_probability,
                   corrected_class)


def state_of(verdict: str | None) -> str:
    """What a case shows for its latest verdict."""
    return NOT_REVIEWED if verdict in (None, REOPENED) else verdict


class VerdictLog:
    """The ``reviews`` table of one results output: verdicts appended (one Delta commit each, serialised within
    this process; Delta's optimistic concurrency keeps appends from several processes whole) and read back."""

    def __init__(self, output: str):
        self.output, self.uri = output, tables.table_uri(output, REVIEWS)
        self.lock = threading.Lock()

    def append(self, verdict: Verdict) -> dict:
        row = {**dataclasses.asdict(verdict), REVIEWED_AT: tables.utc_now()}
        with self.lock:
            write_deltalake(self.uri, pa.Table.from_pylist([row], schema=REVIEWS_SCHEMA), mode="append",
                            storage_options=storage.delta_options(self.uri))
        return row

    def rows(self) -> pa.Table:
        """Every verdict ever recorded, oldest first (an output without verdicts: none)."""
        delta = tables.open_table(self.output, REVIEWS)
        if delta is None:
            return REVIEWS_SCHEMA.empty_table()
        return delta.to_pyarrow_dataset().to_table().select(REVIEWS_SCHEMA.names).sort_by(REVIEWED_AT)

    def latest(self) -> dict[tuple[str, str], dict]:
        """(run id, case key) -> the case's latest verdict row."""
        return {(row[col.RUN_ID], row[CASE_KEY]): row for row in self.rows().to_pylist()}


def dataset(output: str, as_of: datetime.datetime | None = None) -> pads.Dataset:
    """The ``reviews`` table (as it was at ``as_of``, if given) as a pyarrow dataset, for SQL; empty when no verdict
    was recorded (by then)."""
    delta = tables.open_table(output, REVIEWS, as_of)
    if delta is None:
        return pads.dataset(REVIEWS_SCHEMA.empty_table())
    return delta.to_pyarrow_dataset()


def verdict_at(value: datetime.datetime) -> str:
    return value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
