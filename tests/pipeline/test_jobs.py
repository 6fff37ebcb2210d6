"""The screening job as users run it: a subprocess with an embedded Ray against S3 on localhost (moto server),
and ``ray job submit`` to a head node started by the test."""

import json
import os
import pathlib
import secrets
import subprocess
import sys
import time

import boto3
import deltalake
import pyarrow.compute as pc
import pytest

from infra import storage
from tests.conftest import ROOT, SAMPLES, TEST_KEY, job_summary
from tests.support.processes import RayNode

pytestmark = pytest.mark.slow


def run_job(args: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """The job in its own process, with the environment a user's shell would give it: not the test session's
    TensorFlow log level (``ray_local`` sets one), so the job's own quiet default is what is tested."""
    env = {name: value for name, value in env.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", "jobs.screen", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def s3_archive(s3_endpoint):
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="hospital-archive")
    client.create_bucket(Bucket="screening-results")
    for path in (SAMPLES / "archive").rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "hospital-archive", f"mri/{path.relative_to(SAMPLES / 'archive')}")
    client.put_object(Bucket="hospital-archive", Key="mri/bad/empty.dcm", Body=b"")
    return client


def test_screening_reads_and_writes_s3(s3_archive, model_uri):
    env = {**os.environ, "PSEUDONYM_KEY": TEST_KEY}
    done = run_job(["--input", "s3://hospital-archive/mri", "--output", "s3://screening-results/nightly",
                    "--model", model_uri, "--run-date", "2026-11-02"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = job_summary(done.stdout)
    uri = "s3://screening-results/nightly/predictions"  # read as any Delta reader would
    table = deltalake.DeltaTable(uri, storage_options=storage.delta_options(uri)).to_pyarrow_table()
    keys = {obj["Key"] for obj in s3_archive.list_objects_v2(Bucket="hospital-archive")["Contents"]}
    assert {uri.removeprefix("s3://hospital-archive/") for uri in table["source_uri"].to_pylist()} == keys
    assert table.num_rows == summary["rows_written"] == len(keys) + 3
    assert summary["errors_by_code"] == {"empty_file": 1}
    assert TEST_KEY not in done.stdout + done.stderr
    noise = ("oneDNN", "cuda", "cuInit", "absl::InitializeLog", "Progress bars disabled", "\x1b[")
    assert [word for word in noise if word in done.stderr] == []  # quiet unless --verbose, no colour codes
    keys = [obj["Key"] for obj in s3_archive.list_objects_v2(Bucket="screening-results")["Contents"]]
    markers = [key for key in keys if key.endswith("/")]
    assert not [key for key in keys if "/_work/" in key]  # nothing left of the run's work folder or lock
    assert all(any(other.startswith(key) and not other.endswith("/") for other in keys) for key in markers)
    answers = {}
    for command in (["flagged"], ["summary"], ["history"], ["sql", "SELECT count(*) AS n FROM current_predictions"],
                    ["patient", table.filter(pc.is_valid(table["patient_key"]))["patient_key"][0].as_py()]):
        asked = subprocess.run([sys.executable, "-m", "jobs.query", *command, "--results",
                                "s3://screening-results/nightly", "--format", "json"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=300)
        assert asked.returncode == 0, asked.stderr[-2000:]
        answers[command[0]] = json.loads(asked.stdout)
    flagged = table.filter(pc.fill_null(table["flagged"], False))
    series_keys = {row["series_key"] for row in answers["flagged"] if row["kind"] == "series"}
    images = [row for row in answers["flagged"] if row["kind"] == "image"]
    assert len(images) == pc.sum(pc.is_null(flagged["series_key"])).as_py() and series_keys
    assert series_keys <= set(flagged["series_key"].to_pylist())
    assert [run["run_id"] for run in answers["summary"]] == [summary["run_id"]]
    assert {entry["table"] for entry in answers["history"]} == {"predictions", "series", "runs"}
    assert answers["sql"] == [{"n": table.num_rows}] and answers["patient"]


def test_an_unwritable_s3_output_stops_the_job_with_a_clear_message(s3_archive, model_uri):
    env = {**os.environ, "PSEUDONYM_KEY": TEST_KEY}
    done = run_job(["--input", "s3://hospital-archive/mri", "--output", "s3://no-such-bucket/results",
                    "--model", model_uri], env)
    assert done.returncode == 2
    assert "no-such-bucket" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def cluster_env():
    """Token authentication on, as on a real cluster: the head and the job client share the token."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
            "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def ray_head(cluster_env):
    """A Ray head node with its dashboard (the job server), stopped with the test module."""
    head = RayNode(cluster_env, "--num-cpus=2")
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            probe = subprocess.run([str(pathlib.Path(sys.executable).parent / "ray"), "job", "list",
                                    "--address", head.job_address], capture_output=True, text=True, env=cluster_env)
            if probe.returncode == 0:
                break
            time.sleep(2)
        else:
            raise AssertionError(f"the head's job server at {head.job_address} did not answer in 120 s: "
                                 f"{probe.stderr[-2500:]}\nthe head's logs:\n{head.log_tail()}")
        yield head.job_address
    finally:
        head.stop()


def submit(ray_head: str, cluster_env: dict, *arguments: str) -> subprocess.CompletedProcess:
    """``ray job submit`` of the screening job, exactly as the README writes it (``python -m jobs.screen``)."""
    command = [str(pathlib.Path(sys.executable).parent / "ray"), "job", "submit", "--address", ray_head,
               "--working-dir", str(ROOT), "--", "python", "-m", "jobs.screen", *arguments]
    for _ in range(10):  # the head's job agent comes up a little after its dashboard
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=cluster_env)
        if "No available agent" not in done.stderr:
            return done
        time.sleep(5)
    return done


def test_ray_job_submit_runs_the_screening_job_on_a_cluster(ray_head, cluster_env, model_uri, tmp_path):
    """The key reaches the job as a file on the node (never in the runtime environment, which `ray job list`
    shows); a relative output, which would land in Ray's temporary copy of the working directory, is refused."""
    output, key_file = tmp_path / "results", tmp_path / "pseudonym.key"
    key_file.write_text(TEST_KEY)
    model = str(pathlib.Path(model_uri).resolve())
    relative = submit(ray_head, cluster_env, "--input", str(SAMPLES / "archive"), "--output", "out/lost",
                      "--pseudonym-key-file", str(key_file), "--model", model)
    assert relative.returncode != 0 and "--output out/lost is a relative path" in relative.stdout + relative.stderr
    done = submit(ray_head, cluster_env, "--input", str(SAMPLES / "archive"), "--output", str(output),
                  "--pseudonym-key-file", str(key_file), "--model", model)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout
    table = deltalake.DeltaTable(str(output / "predictions")).to_pyarrow_table()
    files = [p for p in (SAMPLES / "archive").rglob("*") if p.is_file()]
    assert table.num_rows == len(files) + 3
    assert set(table["status"].to_pylist()) == {"ok"}
    listed = subprocess.run([str(pathlib.Path(sys.executable).parent / "ray"), "job", "list", "--address",
                             ray_head], capture_output=True, text=True, timeout=120, env=cluster_env)
    assert listed.returncode == 0 and "jobs.screen" in listed.stdout
    assert TEST_KEY not in done.stdout + done.stderr + listed.stdout
