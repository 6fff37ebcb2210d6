"""Bad usage is bad input: each mistake a new user makes is refused at once, before Ray starts, with exit status 2
and a message naming the option or path and what is allowed; nothing is written."""

import importlib
import os
import socket
import time
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SAMPLES


def job(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"jobs.{name}", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.mark.parametrize("option, value, message", [
    ("--threshold", "2", "--threshold: must be >= 0 and <= 1"),
    ("--threshold", "-1", "--threshold: must be >= 0 and <= 1"),
    ("--run-date", "23/11/2026", "--run-date: must be a date written YYYY-MM-DD"),
    ("--run-date", "2026-02-30", "--run-date: must be a date written YYYY-MM-DD"),
    ("--decode-batch-size", "0", "--decode-batch-size: must be >= 1"),
    ("--inference-cpus", "-0.5", "--inference-cpus: must be > 0"),
    ("--max-frames", "many", "--max-frames: expected an integer"),
])
def test_out_of_range_options_are_refused_with_what_is_allowed(tmp_path, option, value, message):
    result = job("screen", "--input", str(SAMPLES / "archive"), "--output", str(tmp_path / "out"), option, value)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, value, message", [
    ("--validation-fraction", "1.5", "--validation-fraction: must be > 0 and < 1"),
    ("--epochs", "0", "--epochs: must be >= 1"),
    ("--image-size", "16", "--image-size: must be >= 32"),
    ("--members", "0", "--members: must be >= 1"),
])
def test_retraining_options_are_validated(tmp_path, option, value, message):
    result = job("retrain", "--data", str(SAMPLES / "labelled"), "--output", str(tmp_path / "reg"), option, value)
    assert result.returncode == 2 and message in result.stderr


def test_more_reused_members_than_members_are_refused(tmp_path):
    result = job("retrain", "--data", str(SAMPLES / "labelled"), "--output", str(tmp_path / "reg"), "--members", "1",
                 "--member-model", str(tmp_path / "a"), "--member-model", str(tmp_path / "b"))
    assert result.returncode == 2 and "--member-model given 2 times for --members 1" in result.stderr
    assert not (tmp_path / "reg").exists()


def test_reviews_that_cannot_be_read_are_refused_before_training(tmp_path):
    labelled = ("retrain", "--data", str(SAMPLES / "labelled"), "--output", str(tmp_path / "reg"))
    result = job(*labelled, "--reviews", str(tmp_path), "--folds", "3")
    assert result.returncode == 2 and "leave out --site-data, --reviews" in result.stderr
    result = job(*labelled, "--reviews", str(tmp_path))
    assert result.returncode == 2 and f"--reviews {tmp_path}: no results tables there" in result.stderr
    assert not (tmp_path / "reg").exists()


def test_an_empty_input_never_replaces_a_dates_results(tmp_path):
    empty = tmp_path / "export"
    empty.mkdir()
    result = job("screen", "--input", str(empty), "--output", str(tmp_path / "out"), "--run-date", "2026-11-20")
    assert result.returncode == 2 and "no input files found" in result.stderr and "--allow-empty" in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_output_inside_the_input_is_refused_before_ray_starts(tmp_path):
    archive = tmp_path / "export"
    (archive / "loose").mkdir(parents=True)
    (archive / "loose" / "a.png").write_bytes((SAMPLES / "archive" / "loose" / "tumor-y147.png").read_bytes())
    result = job("screen", "--input", str(archive), "--output", str(archive / "loose" / "results"))
    assert result.returncode == 2 and f"the output {archive / 'loose' / 'results'} is inside the input" in \
        result.stderr
    assert "Ray resources" not in result.stderr and not (archive / "loose" / "results").exists()


@pytest.mark.parametrize("args, message", [
    (["--input", "/nonexistent/archive"], "/nonexistent/archive does not exist"),
    (["--input", "SAMPLES", "--model", "/nonexistent/model"], "no model at /nonexistent/model"),
    (["--manifest", "/nonexistent/list.txt"], "/nonexistent/list.txt"),
])
def test_missing_paths_are_reported_before_ray_starts(tmp_path, args, message):
    args = [str(SAMPLES / "archive") if arg == "SAMPLES" else arg for arg in args]
    result = job("screen", *args, "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and message in result.stderr
    assert "Ray resources" not in result.stderr  # refused before Ray started


@pytest.mark.parametrize("rules, message", [
    ("rules: [{name: a, action: skip, all: [{keyword: PatientID, equals: X}]}]", "patient identity (PatientID)"),
    ("rules: [{name: a, action: drop}]", "action must be skip or score"),
    (None, "could not be read"),
])
def test_bad_selection_rules_are_refused_before_ray_starts(tmp_path, rules, message):
    path = tmp_path / "rules.yaml"
    if rules is not None:
        path.write_text(rules)
    result = job("screen", "--input", str(SAMPLES / "archive"), "--output", str(tmp_path / "out"),
                 "--selection-rules", str(path), "--pseudonym-key-file", str(tmp_path / "key"),
                 "--create-pseudonym-key")
    assert result.returncode == 2 and message in result.stderr and str(path) in result.stderr
    assert "Ray resources" not in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["screen", "retrain", "evaluate", "findings"])
def test_help_is_quick_and_explains_every_option(name):
    module = importlib.import_module(f"jobs.{name}")
    undocumented = [action.option_strings for action in module.build_parser()._actions if not action.help]
    assert not undocumented
    result = job(name, "--help")
    assert result.returncode == 0 and result.stdout.startswith(f"usage: python -m jobs.{name}")
    assert "(default:" in result.stdout and "tensorflow" not in result.stderr.lower()


@pytest.mark.parametrize("name, args", [
    ("screen", ["--input", "s3://archive/exports", "--output", "s3://results/screening"]),
    ("retrain", ["--data", "s3://archive/labelled", "--output", "s3://models/registry"]),
])
def test_an_unreachable_s3_endpoint_is_named_within_seconds(name, args):
    with socket.socket() as closed:  # a port that was free a moment ago: nothing listens there
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1"}
    started = time.monotonic()
    result = job(name, *args, env=env)
    assert result.returncode == 2 and f"cannot reach S3 at {endpoint}" in result.stderr
    assert time.monotonic() - started < 20


def test_the_readme_lists_every_error_code():
    from model.errors import ErrorCode

    readme = (ROOT / "README.md").read_text()
    assert [code.value for code in ErrorCode if f"`{code.value}`" not in readme] == []


def test_a_local_cache_is_not_used_when_retraining_joins_a_cluster(monkeypatch):
    from jobs.retrain import parse_args, usable_cache

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local = parse_args(["--data", "d", "--output", "o", "--cache", "/var/cache/mri"])
    assert usable_cache(local) == "/var/cache/mri"
    on_cluster = parse_args(["--data", "d", "--output", "o", "--cache", "/var/cache/mri", "--address", "auto"])
    assert usable_cache(on_cluster) is None
    shared = parse_args(["--data", "d", "--output", "o", "--cache", "s3://models/cache", "--address", "auto"])
    assert usable_cache(shared) == "s3://models/cache"


def test_healthy_mirroring_without_the_tumor_masks_is_refused(capsys):
    from jobs.retrain import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--data", "d", "--output", "o", "--healthy-mirror", "0.3"])
    assert "--healthy-mirror needs --tumor-map-weight" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--data", "d", "--output", "o", "--healthy-mirror", "0.3", "--tumor-map-weight", "1",
                    "--no-augment"])
    assert "--healthy-mirror is part of the augmentation" in capsys.readouterr().err
    chosen = parse_args(["--data", "d", "--output", "o", "--healthy-mirror", "0.3", "--tumor-map-weight", "1"])
    assert chosen.healthy_mirror == 0.3


def test_learning_tumor_maps_without_a_single_mask_is_refused_before_ray_starts(tmp_path):
    result = job("retrain", "--data", str(SAMPLES / "labelled"), "--output", str(tmp_path / "registry"),
                 "--tumor-map-weight", "1")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--tumor-map-weight: none of the labelled images has a tumor mask" in result.stderr
    assert "Ray resources" not in result.stderr and not (tmp_path / "registry").exists()
