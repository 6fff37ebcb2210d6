"""The query job answers what was asked: a moment before the tables existed had nothing, a range given backwards is
refused, and a study date is written one way (YYYY-MM-DD) in every output, as in the report. On real Delta tables
committed without Ray."""

import datetime
import json
import subprocess
import sys

import pytest

from pipeline import schema as col
from tests.conftest import ROOT
from tests.support import nights

DATE = "2026-11-03"


def commit_night(output: str) -> None:
    """A committed night: a flagged image of a study of 2 November 2026 and its flagged series."""
    image = {col.SOURCE_URI: "/archive/a.dcm", col.STATUS: col.STATUS_OK,
             col.TUMOR_PROBABILITY: 0.9, col.FLAGGED: True, col.PREDICTED_CLASS: "glioma", col.PATIENT_KEY: "p1",
             col.STUDY_KEY: "s1", col.STUDY_DATE: "20261102"}
    series = {col.PATIENT_KEY: "p1", col.STUDY_KEY: "s1",
              col.SERIES_KEY: "r1", col.STUDY_DATE: "20261102", col.SLICES: 1, col.TUMOR_PROBABILITY: 0.9,
              col.FLAGGED: True, col.PREDICTED_CLASS: "glioma", col.ORDERED_SOURCE_URIS: ["/archive/b.dcm"],
              col.ORDERED_FRAME_INDICES: [0], col.MOST_SUSPICIOUS_SLICE_INDEX: 0}
    nights.commit_night(output, "run-a", DATE, [image], [series],
                        datetime.datetime(2026, 11, 3, 2, tzinfo=datetime.timezone.utc))


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> str:
    output = str(tmp_path_factory.mktemp("answers") / "results")
    commit_night(output)
    return output


def query(output: str, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.query", *arguments, "--results", output], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def refused(done: subprocess.CompletedProcess) -> bool:
    return done.returncode == 2 and done.stdout == "" and done.stderr.strip() != ""


@pytest.mark.parametrize("command", [["summary"], ["flagged"], ["sql", "SELECT * FROM predictions"]])
def test_a_moment_before_the_tables_existed_had_nothing(output, command):
    done = query(output, *command, "--as-of", "2000-01-01T06:00")
    assert refused(done) and len(done.stderr.strip().splitlines()) == 1
    assert "held no screening results at 2000-01-01 06:00:00 UTC" in done.stderr


def test_a_moment_after_the_first_commit_reads_it(output):
    later = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=1)).isoformat()
    done = query(output, "summary", "--as-of", later, "--format", "json")
    assert done.returncode == 0 and [row[col.RUN_ID] for row in json.loads(done.stdout)] == ["run-a"]


@pytest.mark.parametrize("command", ["summary", "flagged"])
def test_a_range_given_backwards_is_refused(output, command):
    done = query(output, command, "--from", "2026-12-05", "--to", "2026-12-01")
    assert refused(done) and "--from 2026-12-05 is after --to 2026-12-01" in done.stderr


def test_a_date_and_a_range_together_are_refused(output):
    done = query(output, "flagged", "--date", "2026-11-03", "--from", "2026-11-01")
    assert refused(done) and "not both" in done.stderr


@pytest.mark.parametrize("arguments", [
    ["flagged"], ["flagged", "--format", "csv"], ["flagged", "--format", "json"], ["patient", "p1"],
    ["sql", "SELECT study_date FROM predictions UNION ALL SELECT study_date FROM series_all"],
    ["sql", "SELECT study_date FROM current_studies"],
])
def test_a_study_date_is_printed_yyyy_mm_dd(output, arguments):
    done = query(output, *arguments)
    assert done.returncode == 0, done.stderr
    assert "2026-11-02" in done.stdout and "20261102" not in done.stdout


def test_a_study_date_filters_in_the_form_it_is_shown(output):
    done = query(output, "sql", "SELECT count(*) AS n FROM series WHERE study_date >= '2026-11-01'", "--format",
                 "json")
    assert json.loads(done.stdout) == [{"n": 1}]
