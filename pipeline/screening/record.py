"""One run as it is recorded: its ``runs`` row and the job's one-line summary."""

from __future__ import annotations

import dataclasses
import datetime
import json


from pipeline.results import tables
from pipeline import schema as col
from pipeline.screening.choice import Selection
from pipeline.screening.summary import Outcomes



@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run, as its ``runs`` row (``to_row``) and as the job's one-line JSON summary (``summary``)."""

    run_id: str
    run_date: str
    started_at: datetime.datetime
    finished_at: datetime.datetime
    duration_seconds: float
    input: str
    output: str
    mode: str
    files_listed: int
    files_unchanged: int
    files_other_model: int
    rows_written: int
    rows_scored: int
    rows_error: int
    rows_flagged: int
    series: int
    series_flagged: int
    errors_by_code: dict
    images_per_second: float
    model_version: str
    model_sha256: str
    threshold: float
    options: dict
    recovered_runs: list = dataclasses.field(default_factory=list)  # earlier runs whose commit this run finished
    rows_skipped: int = 0  # not brain MRI by the selection rules
    rows_ood: int = 0  # scored, but unlike anything the model was trained on
    skipped_by_reason: dict = dataclasses.field(default_factory=dict)  # rows skipped per selection rule
    scoring_seconds: float = 0.0  # the scoring stage alone: from the actors starting to the last row
    scoring_images_per_second: float = 0.0  # rows per second of scoring_seconds (images_per_second: of the run)
    files_carried_over: int = 0  # files whose rows the date's standing run held, copied instead of scored
    rows_carried_over: int = 0  # their rows: part of rows_written, left out of the rates

    def to_row(self) -> dict:
        """The ``runs`` row: every column of ``RUNS_SCHEMA``, the two mappings as JSON text."""
        row = dataclasses.asdict(self)
        row[col.ERRORS_BY_CODE] = json.dumps(self.errors_by_code)
        row[col.SKIPPED_BY_REASON] = json.dumps(self.skipped_by_reason)
        row[col.OPTIONS] = json.dumps(self.options, default=str)
        return {name: row[name] for name in col.RUNS_SCHEMA.names}

    def summary(self) -> dict:
        """JSON-ready counts and identity of the run (without its options)."""
        return {key: value for key, value in dataclasses.asdict(self).items() if key != col.OPTIONS}


def run_record(config, info, run_id, run_date, started, selection: Selection, counts: Outcomes, series_counts,
               threshold, recovered, scoring_seconds: float = 0.0, carried_rows: int = 0) -> RunRecord:
    """The run's record; its rate over the whole run (``images_per_second``, Ray's start-up, the listing and the
    commit's preparation included) and over the scoring stage alone (``scoring_images_per_second``), each of the
    rows it scored (not those it carried over)."""
    rows = counts.rows - carried_rows
    finished = tables.utc_now()
    duration = (finished - started).total_seconds()
    options = {key: value for key, value in dataclasses.asdict(config).items() if key != "pseudonym_key_file"}
    return RunRecord(
        run_id=run_id, run_date=run_date, started_at=started, finished_at=finished, duration_seconds=duration,
        input=", ".join(config.inputs + config.manifests), output=config.output, mode=selection.mode,
        files_listed=selection.listed, files_unchanged=selection.unchanged, files_other_model=selection.other_model,
        rows_written=counts.rows, rows_scored=counts.scored, rows_error=counts.errors, rows_flagged=counts.flagged,
        rows_skipped=counts.skipped, rows_ood=counts.ood, skipped_by_reason=counts.skipped_by_reason,
        series=series_counts[0], series_flagged=series_counts[1], errors_by_code=counts.errors_by_code,
        images_per_second=rows / duration if duration else 0.0, scoring_seconds=scoring_seconds,
        scoring_images_per_second=rows / scoring_seconds if scoring_seconds else 0.0, model_version=info.version,
        model_sha256=info.weights_sha256, threshold=threshold, options=options, recovered_runs=recovered,
        files_carried_over=selection.carried_over, rows_carried_over=carried_rows)
