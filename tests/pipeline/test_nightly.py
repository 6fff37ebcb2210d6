"""Nightly use on a local Ray with real Delta tables: a night scores only new and changed files, a re-run of a date
changes no counts (it carries the night's rows over), an empty night erases nothing, a model change is reported,
series are summarised from all of their current slices, and the query job answers from the tables the job wrote, as
DuckDB and deltalake read them."""

import collections
import json
import os
import shutil
import subprocess
import sys
import time

import deltalake
import duckdb
import pytest

from pipeline.results import tables, views
from pipeline.screening import ScreenConfig, run_screening
from tests.conftest import ROOT, SAMPLES, TEST_KEY, job_summary
from tests.support.nights import sample_archive_copy

pytestmark = pytest.mark.slow

NIGHTS = ("2026-11-10", "2026-11-11", "2026-11-12")


def current(output) -> list[dict]:
    with views.connect(str(output)) as connection:
        return connection.sql("SELECT * FROM current_predictions").to_arrow_table().to_pylist()


def query(output, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.query", *arguments, "--results", str(output)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def nights(model_uri, ray_local, tmp_path_factory):
    """Night 1 over the sample archive; then two files added (a loose image and a slice of an existing series) and
    one changed; night 2; a re-run of night 2; night 3 with nothing new."""
    with sample_archive_copy(tmp_path_factory.mktemp("nightly")) as (archive, output):
        return night_after_night(archive, output, dict(inputs=(str(archive),), output=str(output), model=model_uri))


def night_after_night(archive, output, config):
    first = run_screening(ScreenConfig(**config, run_date=NIGHTS[0]))
    loose = sorted((archive / "loose").glob("*.jpg"))
    shutil.copy(loose[0], archive / "loose" / "arrived-tonight.jpg")
    series = archive / "dicom" / "axial-glioma"
    extra_slice = sorted(series.glob("*.dcm"))[0]
    shutil.copy(extra_slice, series / "resent-slice.dcm")
    changed = loose[1]
    changed.write_bytes(loose[2].read_bytes())
    time.sleep(0.01)
    second = run_screening(ScreenConfig(**config, run_date=NIGHTS[1]))
    rerun = run_screening(ScreenConfig(**config, run_date=NIGHTS[1]))
    quiet = run_screening(ScreenConfig(**config, run_date=NIGHTS[2]))
    added = {str(archive / "loose" / "arrived-tonight.jpg"), str(series / "resent-slice.dcm")}
    return output, archive, (first, second, rerun, quiet), added, str(changed), str(series)


def test_a_night_scores_only_new_and_changed_files(nights):
    output, archive, (first, second, rerun, _), added, changed, _ = nights
    files = [path for path in archive.rglob("*") if path.is_file()]
    assert first.files_unchanged == 0 and first.rows_written == len(files) - 2 + 3  # multi-frame: 4 rows
    rows = [row for row in tables.read_table(str(output), tables.PREDICTIONS).to_pylist()
            if row["run_date"] == NIGHTS[1]]
    assert {row["run_id"] for row in rows} == {rerun.run_id}  # the re-run replaced the night's rows
    assert {row["source_uri"] for row in rows} == added | {changed}
    assert (second.files_listed, second.files_unchanged, second.rows_written) == (len(files), len(files) - 3, 3)


def test_the_current_view_has_one_row_per_frame_each_from_the_night_that_last_scored_it(nights):
    output, archive, (first, _, rerun, _), added, changed, _ = nights
    rows = current(output)
    frames = collections.Counter((row["source_uri"], row["frame_index"]) for row in rows)
    files = [path for path in archive.rglob("*") if path.is_file()]
    assert set(frames.values()) == {1} and len(frames) == len(files) + 3
    by_uri = {row["source_uri"]: row for row in rows}
    assert {uri for uri, row in by_uri.items() if row["run_id"] == rerun.run_id} == added | {changed}
    assert {row["run_id"] for uri, row in by_uri.items() if uri not in added | {changed}} == {first.run_id}
    assert by_uri[changed]["source_size"] == os.path.getsize(changed)


def test_a_rerun_of_a_night_and_an_empty_night_change_no_counts(nights):
    output, _, (first, second, rerun, quiet), _, _, _ = nights
    assert (rerun.rows_written, rerun.files_unchanged) == (second.rows_written, second.files_unchanged)
    assert (rerun.files_carried_over, rerun.rows_carried_over) == (3, second.rows_written)  # nothing rescored
    assert quiet.rows_written == 0 and quiet.files_unchanged == quiet.files_listed
    predictions = tables.read_table(str(output), tables.PREDICTIONS)
    assert predictions.num_rows == first.rows_written + second.rows_written
    runs = tables.read_table(str(output), tables.RUNS).to_pylist()
    assert [run["run_date"] for run in runs].count(NIGHTS[1]) == 2 and len(runs) == 4


def test_a_series_that_gains_a_slice_is_summarised_whole(nights):
    output, _, (first, _, rerun, _), _, _, series = nights
    rows = [row for row in tables.read_table(str(output), tables.SERIES).to_pylist()
            if row["ordered_source_uris"][0].startswith(series)]
    latest = max(rows, key=lambda row: row["run_date"])
    assert latest["run_id"] == rerun.run_id and latest["slices"] == 6  # five slices from night 1, one new
    earliest = min(rows, key=lambda row: row["run_date"])
    assert earliest["run_id"] == first.run_id and earliest["slices"] == 5


def test_a_new_model_is_reported_and_rescores_only_when_asked(nights, ray_local, monkeypatch):
    output, archive, (_, _, _, quiet), _, _, _ = nights
    monkeypatch.setenv("PSEUDONYM_KEY", TEST_KEY)
    other = str(ROOT / "models" / "mri-pool-v1")
    config = dict(inputs=(str(archive),), output=str(output), model=other, run_date="2026-11-13")
    noticed = run_screening(ScreenConfig(**config))
    assert noticed.files_other_model == quiet.files_listed and noticed.rows_written == 0
    runs = {run["run_id"]: run for run in tables.read_table(str(output), tables.RUNS).to_pylist()}
    assert runs[noticed.run_id]["files_other_model"] == quiet.files_listed
    rescored = run_screening(ScreenConfig(**config, rescore_on_model_change=True))
    assert rescored.rows_written == quiet.files_listed + 3 and rescored.files_unchanged == 0
    assert {row["model_version"] for row in current(output)} == {"mri-pool-v1"}


def test_the_query_job_answers_from_the_tables_and_agrees_with_duckdb_and_deltalake(nights):
    output, *_ = nights
    flagged = query(output, "flagged", "--from", NIGHTS[0], "--to", NIGHTS[1], "--format", "json")
    assert flagged.returncode == 0, flagged.stderr
    listed = json.loads(flagged.stdout)
    probabilities = [row["tumor_probability"] for row in listed]
    assert listed and probabilities == sorted(probabilities, reverse=True)
    series = [row for row in listed if row["kind"] == "series"]
    assert series and all(row["deciding_source_uri"].endswith(".dcm") for row in series)
    expected = deltalake.DeltaTable(str(output / "series")).to_pyarrow_table().to_pylist()
    assert len(series) == sum(1 for row in expected if row["flagged"] and row["run_date"] in NIGHTS[:2])

    patient_key = series[0]["patient_key"]
    history = query(output, "patient", patient_key, "--format", "json")
    assert history.returncode == 0 and {row["study_key"] for row in json.loads(history.stdout)} == {
        series[0]["study_key"]}

    summary = query(output, "summary", "--format", "csv")
    assert summary.returncode == 0 and summary.stdout.count(NIGHTS[1]) == 2

    counted = query(output, "sql", "SELECT count(*) AS n FROM predictions_all", "--format", "json")
    raw = deltalake.DeltaTable(str(output / "predictions")).to_pyarrow_dataset()
    with duckdb.connect() as connection:
        connection.register("raw", raw)
        direct = connection.sql("SELECT count(*) FROM raw").fetchall()[0][0]
    assert json.loads(counted.stdout) == [{"n": direct}] and direct == raw.count_rows()

    for arguments, message in ((("patient", "no-such-key"), "no results for patient key"),
                               (("sql", "SELEC 1"), "syntax error")):
        failed = query(output, *arguments)
        assert failed.returncode == 2 and message in failed.stderr and "Traceback" not in failed.stderr
    empty = query(output, "flagged", "--date", "2020-01-01")
    assert empty.returncode == 0 and "(no rows)" in empty.stdout


def test_a_second_run_of_the_same_output_is_refused_while_the_first_writes(model_uri, tmp_path):
    output = tmp_path / "results"
    command = [sys.executable, "-m", "jobs.screen", "--input", str(SAMPLES / "archive"), "--output", str(output),
               "--model", model_uri]
    env = {**os.environ, "PSEUDONYM_KEY": TEST_KEY}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (output / "_work" / "lock.json").exists():
        assert first.poll() is None and time.time() < deadline, "the first run never took the lock"
        time.sleep(0.1)
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    stdout, stderr = first.communicate(timeout=600)
    assert second.returncode == 2 and "is being written by run" in second.stderr, second.stderr[-2000:]
    assert first.returncode == 0, stderr[-2000:]
    summary = job_summary(stdout)
    assert [run["run_id"] for run in tables.read_table(str(output), tables.RUNS).to_pylist()] == [
        summary["run_id"]]
