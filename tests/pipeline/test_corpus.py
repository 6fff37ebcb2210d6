"""The bad-input corpus through the screening job: every file pydicom ships offline plus generated hostile cases.
Every file yields its rows (one per frame) with the right status and a specific error code, the job exits 0, and
the run summary counts the errors by code."""

import collections
import json
import os
import subprocess
import sys

import pytest

from pipeline.results import tables
from pipeline.schema import ERROR_CODES
from tests.conftest import ROOT, TEST_KEY, job_summary
from tests.support.corpus import MAX_FILE_MB, Expected, build_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory, model_uri):
    root = tmp_path_factory.mktemp("corpus") / "archive"
    expected = build_corpus(root)
    missing = root / "generated" / "listed-but-gone.dcm"
    manifest = root.parent / "manifest.txt"
    manifest.write_text(f"# a manifest naming a file that no longer exists\n{missing}\n")
    expected[str(missing)] = Expected("error", code="unreadable_file")
    output = root.parent / "results"
    done = subprocess.run(
        [sys.executable, "-m", "jobs.screen", "--input", str(root), "--manifest", str(manifest), "--output",
         str(output), "--model", model_uri, "--run-date", "2026-11-04", "--max-file-mb", str(MAX_FILE_MB),
         "--selection-rules", "all"],  # every image object is decoded: the corpus is about decoding, not selection
        cwd=ROOT, env={**os.environ, "PSEUDONYM_KEY": TEST_KEY}, capture_output=True, text=True, timeout=900)
    return expected, output, done


def test_the_job_exits_0_and_reports_its_errors_by_code(corpus_run):
    expected, output, done = corpus_run
    assert done.returncode == 0, done.stderr[-3000:]
    summary = job_summary(done.stdout)
    rows = tables.read_table(str(output), tables.PREDICTIONS).to_pylist()
    counted = collections.Counter(row["error_code"] for row in rows if row["error_code"])
    assert summary["errors_by_code"] == dict(counted) and summary["rows_error"] == sum(counted.values())
    assert summary["files_listed"] == len(expected)
    run = tables.read_table(str(output), tables.RUNS).to_pylist()[-1]
    assert json.loads(run["errors_by_code"]) == summary["errors_by_code"]


def test_every_file_yields_one_row_per_frame_with_the_right_status_and_code(corpus_run):
    expected, output, done = corpus_run
    assert done.returncode == 0, done.stderr[-3000:]
    by_file = collections.defaultdict(list)
    for row in tables.read_table(str(output), tables.PREDICTIONS).to_pylist():
        by_file[row["source_uri"]].append(row)
    assert set(by_file) == set(expected)
    wrong = {}
    for uri, outcome in expected.items():
        rows = by_file[uri]
        statuses = {row["status"] for row in rows}
        codes = {row["error_code"] for row in rows}
        if (sorted(row["frame_index"] for row in rows) != list(range(outcome.frames)) or statuses != {outcome.status}
                or (outcome.code is not None and codes != {outcome.code})
                or (outcome.status == "error" and not all(row["error_message"] for row in rows))
                or (outcome.status == "ok" and codes != {None})):
            wrong[uri] = [(row["status"], row["error_code"], row["error_message"]) for row in rows]
    assert not wrong


def test_every_error_code_is_a_declared_specific_one(corpus_run):
    _, output, _ = corpus_run
    codes = {row["error_code"] for row in tables.read_table(str(output), tables.PREDICTIONS).to_pylist()}
    codes.discard(None)
    assert codes <= set(ERROR_CODES) and "internal_error" not in codes
    assert len(codes) >= 12  # the corpus reaches most of the declared codes, not one catch-all
