"""Processes killed mid-run: two scoring actors, which on a CPU-only node also decode (Ray restarts them and
retries their work, the job finishes with every row exactly once; decoding tasks killed on a cluster:
tests/pipeline/test_cluster.py), and the driver itself (nothing commits; a re-run of the date leaves
the tables consistent, nothing duplicated). The real job as a subprocess with its own local Ray."""

import collections
import os
import signal
import subprocess
import sys
import time

import pytest

from infra import storage
from pipeline.results import run_lock, tables
from tests.conftest import ROOT, TEST_KEY, job_summary
from tests.support.corpus import padded_sample_archive
from tests.support.processes import descendants, processes_titled

pytestmark = pytest.mark.slow

SCORING_TITLE = "ScoringActor"
RUN_DATE = "2026-11-07"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """The sample archive with its loose images copied 20 times over: a run long enough to be cut into."""
    root = padded_sample_archive(tmp_path_factory.mktemp("faults") / "archive", copies=20)
    files = [path for path in root.rglob("*") if path.is_file()]
    frames = collections.Counter({str(path): 4 if path.name == "frames.dcm" else 1 for path in files})
    return root, frames


def start_job(archive_root, output) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.screen", "--input", str(archive_root), "--output", str(output), "--run-date",
         RUN_DATE, "--decode-batch-size", "4", "--inference-batch-size", "16"],
        cwd=ROOT, env={**os.environ, "PSEUDONYM_KEY": TEST_KEY}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)


def kill_first(job: subprocess.Popen, title: str, timeout: float = 300) -> int:
    """SIGKILL the first process of the job's Ray titled ``title``, while the job still runs; returns its pid."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if job.poll() is not None:
            _, stderr = job.communicate(timeout=60)
            raise AssertionError(f"the job ended (exit {job.returncode}) before a {title} process could be killed; "
                                 f"its log ends:\n{stderr[-3000:]}")
        found = processes_titled(title, job.pid)
        if found:
            os.kill(found[0], signal.SIGKILL)
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no {title} process appeared in {timeout} s")


def rows_per_frame(output) -> collections.Counter:
    rows = tables.read_table(str(output), tables.PREDICTIONS).to_pylist()
    return collections.Counter((row["source_uri"], row["frame_index"]) for row in rows)


def expected_frames(frames: collections.Counter) -> collections.Counter:
    return collections.Counter({(uri, index): 1 for uri, count in frames.items() for index in range(count)})


def test_killed_scoring_actors_cost_no_row(archive, tmp_path):
    root, frames = archive
    output = tmp_path / "results"
    job = start_job(root, output)
    killed = [kill_first(job, SCORING_TITLE)]
    time.sleep(2)  # let the actors take their first batches before another dies
    killed.append(kill_first(job, SCORING_TITLE))
    stdout, stderr = job.communicate(timeout=900)
    assert job.returncode == 0, stderr[-3000:]
    assert rows_per_frame(output) == expected_frames(frames)
    summary = job_summary(stdout)
    assert summary["rows_written"] == sum(frames.values()) and summary["rows_error"] == 0
    assert len(set(killed)) == 2


def test_killed_driver_commits_nothing_and_a_rerun_leaves_each_frame_once(archive, tmp_path):
    root, frames = archive
    output = tmp_path / "results"
    job = start_job(root, output)
    kill_first(job, SCORING_TITLE)  # proves scoring had begun; then the whole run dies at once
    time.sleep(3)
    assert job.poll() is None, "the run ended before the driver could be killed"
    doomed = descendants(job.pid)
    os.killpg(job.pid, signal.SIGKILL)
    for pid in doomed:  # Ray processes that left the job's process group die with it, as on a lost node
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    job.wait(timeout=60)
    assert not storage.exists(str(output / tables.RUNS)), "the killed run must not have committed"
    assert storage.exists(run_lock.lock_uri(str(output)))  # left by the dead driver, and taken over below
    rerun = start_job(root, output)
    stdout, stderr = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, stderr[-3000:]
    summary = job_summary(stdout)
    assert rows_per_frame(output) == expected_frames(frames)
    assert [run["run_id"] for run in tables.read_table(str(output), tables.RUNS).to_pylist()] == [summary["run_id"]]
    assert not storage.exists(str(output / tables.WORK))  # the killed run's work cleared, the lock released
