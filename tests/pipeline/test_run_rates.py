"""A run reports its scoring rate apart from its wall time: ``scoring_images_per_second`` over the scoring stage
alone (Ray's start-up left out), ``images_per_second`` over the whole run as before; a runs table written before
the scoring columns existed still reads, with them empty. Without Ray."""

import datetime
import json
import subprocess
import sys

import pyarrow as pa
from deltalake import write_deltalake

from pipeline.results import tables
from pipeline import schema as col
from pipeline.screening import ScreenConfig
from pipeline.screening.choice import Selection
from pipeline.screening.record import run_record
from pipeline.screening.summary import Outcomes
from model.registry import load_model_info
from tests.conftest import ROOT
from tests.pipeline.test_query_answers import commit_night


def test_the_run_record_keeps_the_scoring_rate_apart_from_the_wall_time(tmp_path):
    started = tables.utc_now() - datetime.timedelta(seconds=60)
    selection = Selection(str(tmp_path / "verdicts.parquet"), ("new_or_changed",), "incremental", 120, 120)
    outcomes = Outcomes(rows=120, scored=120, errors=0, skipped=0, flagged=3, ood=0, errors_by_code={},
                        skipped_by_reason={})
    record = run_record(ScreenConfig(inputs=("in",), output=str(tmp_path / "out")), load_model_info(), "run-a",
                        "2026-11-03", started, selection, outcomes, (0, 0), 0.5, [], scoring_seconds=4.0)
    assert record.scoring_seconds == 4.0 and record.scoring_images_per_second == 30.0
    assert record.duration_seconds >= 60 and record.images_per_second <= 2.0
    row = record.to_row()
    assert row[col.SCORING_IMAGES_PER_SECOND] == 30.0 and row[col.SCORING_SECONDS] == 4.0


def summary(output: str) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "jobs.query", "summary", "--results", output, "--format", "json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_summary_shows_the_scoring_rate_and_time_beside_the_wall_time(tmp_path):
    output = str(tmp_path / "results")
    commit_night(output)  # a runs row with no scoring figures: a run that scored nothing
    [night] = summary(output)
    assert {col.SCORING_IMAGES_PER_SECOND, col.SCORING_SECONDS, col.DURATION_SECONDS, col.IMAGES_PER_SECOND} <= \
        set(night)
    columns = list(night)
    assert columns.index(col.SCORING_IMAGES_PER_SECOND) < columns.index(col.IMAGES_PER_SECOND)


def test_a_runs_table_written_before_the_scoring_columns_still_reads(tmp_path):
    output = str(tmp_path / "results")
    commit_night(output)
    older = pa.schema([field for field in col.RUNS_SCHEMA
                       if field.name not in (col.SCORING_SECONDS, col.SCORING_IMAGES_PER_SECOND)])
    row = {col.RUN_ID: "run-old", col.RUN_DATE: "2026-11-01", col.IMAGES_PER_SECOND: 0.4, col.DURATION_SECONDS: 90.0,
           col.FINISHED_AT: datetime.datetime(2026, 11, 1, 2, tzinfo=datetime.timezone.utc)}
    runs = str(tmp_path / "older" / tables.RUNS)
    write_deltalake(runs, pa.Table.from_pylist([row], schema=older))
    assert tables.dataset(str(tmp_path / "older"), tables.RUNS).to_table()[col.SCORING_SECONDS].to_pylist() == [None]
    write_deltalake(tables.table_uri(output, tables.RUNS), pa.Table.from_pylist([row], schema=older),
                    mode="append", schema_mode="merge")
    nights = {night[col.RUN_ID]: night for night in summary(output)}
    assert nights["run-old"][col.SCORING_IMAGES_PER_SECOND] is None and nights["run-old"][col.IMAGES_PER_SECOND] == 0.4
