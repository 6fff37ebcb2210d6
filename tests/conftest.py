"""Shared fixtures: paths to committed samples and the shared data sets, a local Ray, an S3 endpoint on localhost,
a PACS (Orthanc with DICOMweb) on localhost."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

from tools.local_pacs import join_reapers, orthanc_missing, orthanc_server
from tools.local_s3 import s3_server

ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
SHARED = ROOT.parent / "shared" / "datasets"
TRAINING = SHARED / "brain-tumor-mri" / "Training"
BR35H = SHARED / "br35h-tumor" / "yes"
TEST_KEY = "test-pseudonym-key-0123456789abcdef"


@pytest.fixture(scope="session")
def shared_training() -> pathlib.Path:
    if not TRAINING.is_dir():
        pytest.skip(f"needs the shared data set at {TRAINING} (absent in a fresh clone)")
    return TRAINING


@pytest.fixture(scope="session")
def ray_local():
    import ray

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
                 runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def job_summary(stdout: str) -> dict:
    """The run summary a job prints as one JSON line; Ray may forward worker output after it, so not always last."""
    lines = [line for line in stdout.splitlines() if line.startswith('{"run_id"')]
    assert lines, f"no run summary in the job's output: {stdout[-2000:]}"
    return json.loads(lines[-1])


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-protocol server (moto in server mode) on localhost, with credentials in the environment."""
    saved = {key: os.environ.get(key) for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                  "AWS_DEFAULT_REGION", "AWS_REGION")}
    with s3_server() as endpoint:
        os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_REGION": "us-east-1"})
        yield endpoint
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def orthanc_reaper():
    """At the session's end, waits for every Orthanc still stopping (all at once, each killed after a bound)."""
    yield
    join_reapers()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory, orthanc_reaper):
    """A real PACS on localhost shared by the session's tests: Orthanc with DICOMweb at ``dicomweb_url``, HTTP basic
    auth (``auth``) and OverwriteInstances. Tests must not stop it: fault tests take ``fresh_orthanc``."""
    skip_without_orthanc()
    with orthanc_server(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture
def fresh_orthanc(tmp_path, orthanc_reaper):
    """An Orthanc of the test's own, empty, for fault tests: ``kill()``, ``stop()``, ``start()``, ``restart()``."""
    skip_without_orthanc()
    with orthanc_server(tmp_path / "orthanc") as server:
        yield server


def skip_without_orthanc() -> None:
    missing = orthanc_missing()
    if missing:
        pytest.skip(missing)
