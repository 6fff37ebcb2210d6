"""The morning report's summary of the night: what a re-run of a date copied instead of scoring is counted there."""

import datetime
import re

from pipeline import schema as col
from pipeline.report.html import summary_section


def runs_row(**values) -> dict:
    row = {name: 0 for name in col.RUNS_SCHEMA.names}
    row.update({col.RUN_ID: "20261120T010000Z-abcd1234", col.MODE: "incremental", col.ERRORS_BY_CODE: "{}",
                col.SKIPPED_BY_REASON: "{}", col.OPTIONS: "{}", col.MODEL_VERSION: "m", col.THRESHOLD: 0.5,
                col.STARTED_AT: datetime.datetime(2026, 11, 20, 1, tzinfo=datetime.timezone.utc)})
    row.update(values)
    return row


def stats(html: str) -> dict[str, str]:
    return {label: value for value, label in re.findall(r"<b>([^<]*)</b><span>([^<]*)</span>", html)}


def test_a_rerun_says_how_many_files_it_carried_over():
    shown = stats(summary_section(runs_row(**{col.FILES_LISTED: 24, col.FILES_CARRIED_OVER: 23}), None, {}))
    assert shown["files carried over from the date&#x27;s earlier run"] == "23" and shown["files listed"] == "24"


def test_a_first_run_of_a_date_shows_no_carried_over_count():
    shown = stats(summary_section(runs_row(**{col.FILES_LISTED: 24}), None, {}))
    assert not any("carried over" in label for label in shown) and shown["files listed"] == "24"
