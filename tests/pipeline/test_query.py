"""The query job against hostile users and hostile file names, on real Delta tables committed without Ray: its SQL
reads the results tables and nothing else, writes nothing, and no file name becomes a terminal escape or a
spreadsheet formula. And a pseudonym key file that cannot be the key stops the jobs that read it with one sentence."""

import csv
import datetime
import io
import json
import subprocess
import sys

import boto3
import pytest

from pipeline import schema as col
from tests.conftest import ROOT, SAMPLES
from tests.support import nights

DATE = "2026-11-03"
SECRET = "site-secret-key-0123456789abcdef"
FORMULA = '=HYPERLINK("http:\\\\evil","x")&cmd.jpg'
NAMES = (FORMULA, "+1-2.jpg", "-sum.jpg", "@cmd.jpg", "\tlead.jpg", "red\x1b[31m\x1b]0;title\x07.jpg",
         "two\nlines\r.jpg", "right-to-left\u202egpj.exe", "plain.jpg")


def commit_night(output: str) -> None:
    """A committed night that flagged an image under each name above."""
    flagged_images = [{col.SOURCE_URI: name, col.STATUS: col.STATUS_OK, col.TUMOR_PROBABILITY: 0.9,
                       col.FLAGGED: True, col.PREDICTED_CLASS: "glioma"} for name in NAMES]
    nights.commit_night(output, "run-a", DATE, flagged_images, [],
                        datetime.datetime(2026, 11, 3, 2, tzinfo=datetime.timezone.utc))


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> str:
    """A committed night, with the site's pseudonym key file beside it (as ``make demo`` leaves it)."""
    root = tmp_path_factory.mktemp("query")
    output = str(root / "results")
    commit_night(output)
    (root / "results-pseudonym.key").write_text(SECRET)
    return output


def query(output: str, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.query", *arguments, "--results", output], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def refused(done: subprocess.CompletedProcess) -> bool:
    """Exit 2 with one line on stderr and nothing on stdout."""
    return done.returncode == 2 and done.stdout == "" and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("sql", [
    "SELECT content FROM read_text('{key}')",
    "SELECT * FROM read_csv('{key}', header = false)",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM glob('{folder}/*')",
    "SELECT * FROM read_parquet('{folder}/results/predictions/**/*.parquet')",
])
def test_the_sql_reads_no_file_but_the_results_tables(output, sql):
    done = query(output, "sql", sql.format(key=f"{output}-pseudonym.key", folder=output.rsplit("/", 1)[0]))
    assert refused(done), done.stderr
    assert SECRET not in done.stdout + done.stderr and "root:" not in done.stdout


@pytest.mark.parametrize("sql", [
    "COPY (SELECT 1) TO '{folder}/copied.csv'",
    "COPY predictions TO '{folder}/copied.parquet'",
    "EXPORT DATABASE '{folder}/exported'",
    "ATTACH '{folder}/attached.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "CREATE TABLE copied AS SELECT * FROM predictions",
    "SET enable_external_access = true",
    "SELECT 1; DROP VIEW predictions",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '{folder}/explained.csv'",
    "UPDATE EXTENSIONS",
])
def test_the_sql_refuses_statements_that_write(output, sql, tmp_path):
    done = query(output, "sql", sql.format(folder=tmp_path))
    assert refused(done) and "only statements that read are run" in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_statements_that_read_still_answer_from_the_registered_tables(output):
    counted = query(output, "sql", "WITH p AS (FROM predictions) SELECT count(*) AS n FROM p", "--format", "json")
    assert counted.returncode == 0 and json.loads(counted.stdout) == [{"n": len(NAMES)}]
    for sql in ("DESCRIBE predictions", "SUMMARIZE runs", "EXPLAIN SELECT * FROM current_predictions"):
        done = query(output, "sql", sql)
        assert done.returncode == 0 and done.stdout, done.stderr


def test_results_on_s3_are_read_with_file_access_off(s3_endpoint):
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="query-results")
    commit_night("s3://query-results/nightly")
    counted = query("s3://query-results/nightly", "sql", "SELECT count(*) AS n FROM current_predictions", "--format",
                    "json")
    assert counted.returncode == 0 and json.loads(counted.stdout) == [{"n": len(NAMES)}], counted.stderr
    copied = query("s3://query-results/nightly", "sql", "COPY predictions TO 's3://query-results/copied.csv'")
    assert refused(copied)


@pytest.mark.parametrize("command", [["sql", "SELECT source_uri, -1 AS n, run_id FROM predictions"], ["flagged"]])
def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_quoted(output, command, tmp_path):
    written = tmp_path / "answer.csv"
    done = query(output, *command, "--format", "csv", "--output", str(written))
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(written.read_bytes().decode(), newline="")))
    named = [row.get("source_uri", row.get("deciding_source_uri")) for row in rows]
    assert sorted(named) == sorted(f"'{name}" if name[0] in "=+-@\t\r" else name for name in NAMES)
    assert {row["run_id"] for row in rows} == {"run-a"} and {row.get("n", "-1") for row in rows} == {"-1"}


def test_the_terminal_table_shows_control_characters_escaped(output):
    done = query(output, "sql", "SELECT source_uri AS \"name\x1b[2J\", run_id FROM predictions ORDER BY source_uri")
    assert done.returncode == 0, done.stderr
    assert not any(character in done.stdout for character in "\x1b\x07\r\t\u202e")
    lines = done.stdout.splitlines()
    assert len(lines) == 2 + len(NAMES) and lines[0].startswith("name\\x1b[2J")
    assert len({line.index("run-a") for line in lines[2:]}) == 1  # every row one line, its columns aligned
    for escaped in ("red\\x1b[31m\\x1b]0;title\\x07.jpg", "two\\nlines\\r.jpg", "right-to-left\\u202egpj.exe"):
        assert escaped in done.stdout


@pytest.mark.parametrize("content, message", [(b"\xef\xbb\xbf" + SECRET.encode(), "byte-order mark"),
                                              (b"\xff\xfe\x00\x81" + SECRET.encode(), "not UTF-8 text"),
                                              (None, "is a directory"),
                                              (b"", "does not exist")])
def test_a_key_file_that_cannot_be_the_key_stops_each_job_with_one_sentence(output, tmp_path, content, message):
    key = tmp_path / "pseudonym.key"
    if content is None:
        key.mkdir()
    elif content:
        key.write_bytes(content)
        key.chmod(0o600)
    looked_up = query(output, "patient", "--patient-id", "MRN-0042", "--pseudonym-key-file", str(key))
    screened = subprocess.run([sys.executable, "-m", "jobs.screen", "--input", str(SAMPLES / "archive" / "dicom"),
                               "--output", str(tmp_path / "screened"), "--pseudonym-key-file", str(key)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    for done in (looked_up, screened):
        assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and SECRET not in done.stdout + done.stderr
        assert "0xff" not in done.stderr and "\\x" not in done.stderr
    assert refused(looked_up) and not (tmp_path / "screened").exists()
