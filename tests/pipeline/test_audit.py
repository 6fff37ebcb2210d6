"""Patient data and access, audited end to end: no identifier planted in a DICOM header, no pseudonym key and no AWS
credential reaches an output file (the morning report's HTML included), the job's stdout or stderr, or any file the
embedded Ray writes.

The test archive is the committed sample series plus MR_small.dcm variants that end as error rows (truncated pixel
data, no pixel data, a NaN rescale, an undecodable transfer syntax) or carry UIDs pydicom reads as invalid (its
warning would quote them). Every file carries random identifiers in every identifying attribute. The real job runs
three times as a subprocess, each with a Ray temp folder of its own (``RAY_TMPDIR``, which Ray honours), so every
log of the run is scanned: driver and worker logs, raylet, GCS, Ray Data. Runs 1 and 2 read the local archive under
a key file the first run creates; run 3 reads the archive from S3 on localhost (moto) under another key given in
``PSEUDONYM_KEY``, with distinctive credentials in the standard AWS environment variables.

Each run also writes its findings back (``--findings-to``): run 1 to a folder, with heat-map captures; run 2 to a
PACS on localhost (Orthanc, when installed; else a folder); run 3 to an S3 prefix. The planted identifiers must
reach those reports, which are of the image's patient and study, and still nothing the run logs or keeps.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import pathlib
import re
import secrets
import shutil
import stat
import string
import subprocess
import sys
import tempfile
import warnings

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest

from tests.conftest import ROOT, SAMPLES, job_summary
from tests.dicomweb.conftest import client_of
from tests.support.corpus import dicom_bytes, mr_dataset, unsupported_syntax, without_pixel_data
from tools.local_pacs import orthanc_missing

pytestmark = pytest.mark.slow

RUN_DATE = "2026-11-05"
KEY_PARTS = ("patient_key", "study_key", "series_key")
RANDOM_PARTS = re.compile(r"[A-Z]{12}|[0-9]{39}")  # the tokens and UID roots planted below


def token() -> str:
    """12 random capitals: a string no log or table holds by chance."""
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(12))


def random_uid() -> str:
    return f"2.25.{10**38 + secrets.randbelow(9 * 10**38)}"


def birth_date() -> str:
    return f"{1920 + secrets.randbelow(80)}{1 + secrets.randbelow(12):02}{1 + secrets.randbelow(28):02}"


def planted_identity() -> dict:
    """One patient's study and series, every identifying attribute random."""
    return {"PatientName": f"{token()}^{token()}", "PatientID": f"MRN-{token()}",
            "OtherPatientIDs": [token(), token()], "PatientBirthDate": birth_date(), "AccessionNumber": token(),
            "StudyInstanceUID": random_uid(), "SeriesInstanceUID": random_uid(),
            "InstitutionName": f"{token()} Hospital", "InstitutionAddress": f"12 {token()} Road, {token()}",
            "ReferringPhysicianName": f"{token()}^{token()}", "StudyID": token()}


def with_identity(dataset: pydicom.Dataset, identity: dict) -> dict:
    """Plant ``identity`` and a random SOPInstanceUID in ``dataset``; returns what was planted."""
    planted = {**identity, "SOPInstanceUID": random_uid()}
    with warnings.catch_warnings():  # the invalid UIDs of one case warn on assignment
        warnings.simplefilter("ignore")
        for keyword, value in planted.items():
            setattr(dataset, keyword, value)
        dataset.file_meta.MediaStorageSOPInstanceUID = planted["SOPInstanceUID"]
    return planted


def truncated_pixels(dataset: pydicom.Dataset) -> bytes:
    return dicom_bytes(dataset)[:-3000]


def nan_rescale(dataset: pydicom.Dataset) -> bytes:
    with warnings.catch_warnings():  # pydicom warns that NaN is no valid DS
        warnings.simplefilter("ignore")
        dataset.RescaleSlope, dataset.RescaleIntercept = "NaN", "0"
        return dicom_bytes(dataset)


def invalid_uid_identity() -> dict:
    """UIDs with letters, as some archives hold: pydicom's reading validation quotes such a value in a warning."""
    return {**planted_identity(), "StudyInstanceUID": f"{random_uid()}.{token()}",
            "SeriesInstanceUID": f"{random_uid()}.{token()}"}


def spine_identity() -> dict:
    """A spine series whose free-text description also carries random text: the selection rules skip it, and its
    reason may quote only what the rule matched ("C-SPINE"), never the rest of the description."""
    return {**planted_identity(), "SeriesDescription": f"SAG T2 C-SPINE {token()} {token()}"}


def as_ct(dataset: pydicom.Dataset) -> bytes:
    dataset.Modality = "CT"
    return dicom_bytes(dataset)


SKIPPED_CASES = {"other/ct.dcm": "not_mr", "other/spine.dcm": "not_head_series"}
MR_SMALL_CASES = {  # file: (expected error code or None for an ok row, its identity, MR_small.dcm -> bytes)
    "other/truncated.dcm": ("dicom_pixel_data_invalid", planted_identity, truncated_pixels),
    "other/no-pixels.dcm": ("dicom_no_pixel_data", planted_identity, without_pixel_data),
    "other/nan-rescale.dcm": ("invalid_pixel_values", planted_identity, nan_rescale),
    "other/mpeg2.dcm": ("dicom_unsupported_transfer_syntax", planted_identity, unsupported_syntax),
    "other/invalid-uids.dcm": (None, invalid_uid_identity, dicom_bytes),
    "other/ct.dcm": (None, planted_identity, as_ct),  # skipped by the selection rules (SKIPPED_CASES)
    "other/spine.dcm": (None, spine_identity, dicom_bytes),
}


@dataclasses.dataclass(frozen=True)
class PlantedArchive:
    root: pathlib.Path
    planted: dict  # file relative to root -> {keyword: planted value}
    expected_errors: dict  # file relative to root -> error code (None: an ok row)


def write_sample_series(root: pathlib.Path, planted: dict) -> None:
    """The committed sample series, one planted identity per series, a planted SOPInstanceUID per file."""
    for series in sorted((SAMPLES / "archive" / "dicom").iterdir()):
        identity = planted_identity()
        for path in sorted(series.glob("*.dcm")):
            dataset = pydicom.dcmread(path)
            relative = f"{series.name}/{path.name}"
            planted[relative] = with_identity(dataset, identity)
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(dicom_bytes(dataset))


def write_mr_small_cases(root: pathlib.Path, planted: dict) -> None:
    (root / "other").mkdir()
    for relative, (_, identity, make) in MR_SMALL_CASES.items():
        dataset = mr_dataset()
        planted[relative] = with_identity(dataset, identity())
        (root / relative).write_bytes(make(dataset))


def read_identity(path: pathlib.Path, like: dict) -> dict:
    """The values of ``like``'s attributes as pydicom reads them back from ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        return {keyword: value_text(dataset.get(keyword)) for keyword in like}


def value_text(value) -> object:
    if isinstance(value, pydicom.multival.MultiValue):
        return [str(item) for item in value]
    return None if value is None else str(value)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> PlantedArchive:
    root = tmp_path_factory.mktemp("audit") / "archive"
    planted = {}
    write_sample_series(root, planted)
    write_mr_small_cases(root, planted)
    expected = {relative: None for relative in planted} | {name: case[0] for name, case in MR_SMALL_CASES.items()}
    return PlantedArchive(root, planted, expected)


def needles(planted: dict) -> dict[str, str]:
    """Lower-cased strings that must not appear anywhere -> where each was planted. Every random part of a value
    (so a name's components and a UID's root count on their own), and a birth date as stored and as ISO date."""
    found = {}
    for relative, values in planted.items():
        for keyword, value in values.items():
            text = " ".join(value) if isinstance(value, list) else value
            parts = RANDOM_PARTS.findall(text)
            if keyword == "PatientBirthDate":
                parts = [text, f"{text[:4]}-{text[4:6]}-{text[6:]}"]
            found.update({part.lower(): f"{relative} {keyword}" for part in parts})
    return found


def occurs(needle: str, text: str) -> bool:
    """``needle`` in ``text``; a date only where no digit adjoins it (not as part of a longer number)."""
    if len(needle) > 10:
        return needle in text
    return re.search(rf"(?<![0-9]){re.escape(needle)}(?![0-9])", text) is not None


def leaks(texts: dict[str, str], forbidden: dict[str, str]) -> list[str]:
    """Where each forbidden string (lower-cased -> its origin) occurs in the scanned texts."""
    return [f"{origin} in {name}" for needle, origin in forbidden.items()
            for name, text in texts.items() if occurs(needle, text)]


# --- the job runs ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JobRun:
    stdout: str
    stderr: str
    summary: dict
    outputs: dict  # output file name -> bytes
    ray_files: dict  # file under the run's Ray temp folder -> bytes
    findings: list = dataclasses.field(default_factory=list)  # the datasets it wrote back (SRs, captures)

    @functools.cached_property
    def texts(self) -> dict[str, str]:
        """Every scanned text, lower-cased: stdout, stderr, each output file raw and each Parquet file's values,
        each file Ray wrote."""
        texts = {"stdout": self.stdout, "stderr": self.stderr}
        for name, data in self.outputs.items():
            texts[f"output {name}"] = data.decode("latin-1")
            if name.endswith(".parquet"):
                texts[f"output {name} (values)"] = json.dumps(parquet(data).to_pylist(), default=str)
        texts.update({f"ray {name}": data.decode("latin-1") for name, data in self.ray_files.items()})
        return {name: text.lower() for name, text in texts.items()}

    def table(self, name: str) -> list[dict]:
        return [row for file, data in sorted(self.outputs.items()) if file.startswith(f"{name}/")
                and file.endswith(".parquet") for row in parquet(data).to_pylist()]


def parquet(data: bytes) -> pa.Table:
    return pq.read_table(pa.BufferReader(data))


def run_job(args: list[str], env: dict, collect_outputs, collect_findings=list) -> JobRun:
    """The job as users run it, with a Ray temp folder of its own (short: Ray's socket paths must stay short)."""
    ray_temp = pathlib.Path(tempfile.mkdtemp(prefix="ray-audit-", dir="/tmp"))
    try:
        done = subprocess.run([sys.executable, "-m", "jobs.screen", *args, "--run-date", RUN_DATE], cwd=ROOT,
                              env={**env, "RAY_TMPDIR": str(ray_temp)}, capture_output=True, text=True,
                              timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        ray_files = {str(path.relative_to(ray_temp)): path.read_bytes() for path in ray_temp.rglob("*")
                     if path.is_file() and not path.is_symlink()}
    finally:
        shutil.rmtree(ray_temp, ignore_errors=True)
    return JobRun(done.stdout, done.stderr, job_summary(done.stdout), collect_outputs(), ray_files,
                  collect_findings())


def local_files(root: pathlib.Path) -> dict:
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def without_aws(environment: dict) -> dict:
    return {name: value for name, value in environment.items() if not name.startswith("AWS_")}


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> pathlib.Path:
    """Where the first run creates key A: outside the archive and the outputs."""
    return tmp_path_factory.mktemp("secrets") / "pseudonym.key"


def folder_findings(folder: pathlib.Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))]


def pacs_findings(server, archive: PlantedArchive) -> list[pydicom.Dataset]:
    """The SRs the PACS holds of the planted studies (the session's PACS holds other tests' too)."""
    client = client_of(server)
    studies = {planted["StudyInstanceUID"] for planted in archive.planted.values()}
    found = [pydicom.Dataset.from_json(row) for row in client.search_for_instances(search_filters={"Modality": "SR"})]
    return [client.retrieve_instance(row.StudyInstanceUID, row.SeriesInstanceUID, row.SOPInstanceUID)
            for row in found if row.StudyInstanceUID in studies]


@pytest.fixture(scope="module")
def pacs(request):
    """The session's PACS (Orthanc on localhost), or None where Orthanc is not installed."""
    return None if orthanc_missing() else request.getfixturevalue("orthanc")


@pytest.fixture(scope="module")
def local_runs(archive, key_file, model_uri, pacs, tmp_path_factory) -> tuple[JobRun, JobRun]:
    """Runs 1 and 2: the same command line, key A from a key file the first run creates; run 1 writes its findings
    to a folder with heat-map captures, run 2 to the PACS (a folder without one)."""
    env = without_aws({name: value for name, value in os.environ.items() if name != "PSEUDONYM_KEY"})
    runs = []
    for number in range(2):
        output, folder = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("findings")
        findings = ["--findings-to", str(folder), "--findings-heat-map"]
        collect = functools.partial(folder_findings, folder)
        if number and pacs is not None:
            env = {**env, "DICOMWEB_USERNAME": pacs.user, "DICOMWEB_PASSWORD": pacs.password}
            findings, collect = ["--findings-to", f"dicomweb+{pacs.dicomweb_url}"], lambda: pacs_findings(pacs, archive)
        runs.append(run_job(["--input", str(archive.root), "--output", str(output), "--model", model_uri,
                             "--pseudonym-key-file", str(key_file), "--create-pseudonym-key", *findings], env,
                            functools.partial(local_files, output), collect))
    return runs[0], runs[1]


@dataclasses.dataclass(frozen=True)
class S3Run:
    run: JobRun
    pseudonym_key: str
    access_key_id: str
    secret_access_key: str


def bucket_files(client, bucket: str, prefix: str) -> dict:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    return {key.removeprefix(prefix): client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


@pytest.fixture(scope="module")
def s3_run(archive, s3_endpoint, model_uri) -> S3Run:
    """Run 3: the archive on S3 on localhost, key B from PSEUDONYM_KEY, distinctive credentials in the standard
    AWS environment variables (the moto server accepts any)."""
    access_key_id = "AKIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16))
    secret_access_key = secrets.token_urlsafe(30)
    pseudonym_key = token() + token() + token()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key_id, "AWS_SECRET_ACCESS_KEY": secret_access_key,
           "PSEUDONYM_KEY": pseudonym_key}
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for bucket in ("audit-archive", "audit-results", "audit-findings"):
        client.create_bucket(Bucket=bucket)
    for relative in archive.planted:
        client.upload_file(str(archive.root / relative), "audit-archive", f"pacs/{relative}")
    run = run_job(["--input", "s3://audit-archive/pacs", "--output", "s3://audit-results/screening",
                   "--model", model_uri, "--findings-to", "s3://audit-findings/reports"], env,
                  lambda: bucket_files(client, "audit-results", "screening/"),
                  lambda: [pydicom.dcmread(io.BytesIO(data)) for name, data in
                           bucket_files(client, "audit-findings", "reports/").items() if name.endswith(".dcm")])
    return S3Run(run, pseudonym_key, access_key_id, secret_access_key)


def relative_uri(uri: str, archive: PlantedArchive) -> str:
    return uri.split("s3://audit-archive/pacs/", 1)[-1].removeprefix(f"{archive.root}/")


def keys_by_file(run: JobRun, archive: PlantedArchive) -> dict[str, tuple]:
    return {relative_uri(row["source_uri"], archive): tuple(row[part] for part in KEY_PARTS)
            for row in run.table("predictions") if row["patient_key"] is not None}


# --- the tests ------------------------------------------------------------------------------------------------


def test_the_planted_identifiers_are_in_the_archive_files(archive):
    for relative, planted in archive.planted.items():
        assert read_identity(archive.root / relative, planted) == planted, relative
    assert len(archive.planted) == 21 and len(needles(archive.planted)) >= 175


def test_no_planted_identifier_reaches_an_output_a_log_or_a_report(archive, local_runs, s3_run):
    for run in (*local_runs, s3_run.run):
        texts = run.texts
        ray_logs = " ".join(text for name, text in texts.items() if name.startswith("ray "))
        # the scan reaches the logs of this run's pipeline (the Ray temporary folder is the run's own)
        assert "mapbatches(scoringactor)" in ray_logs.lower()  # the CPU stage that decodes and scores
        assert any(re.search(r"ray .*logs/worker-.*\.err$", name) for name in texts)
        assert [bool(row["options"] and row["input"]) for row in run.table("runs")] == [True]  # scanned as values
        found = leaks(texts, needles(archive.planted))
        assert not found, found


def test_each_run_writes_a_report_and_it_names_no_patient(archive, local_runs, s3_run):
    for run in (*local_runs, s3_run.run):
        name = f"reports/{RUN_DATE}/{run.summary['run_id']}.html"
        assert name in run.outputs and run.summary["report"].endswith(name)
        report = run.outputs[name].decode("utf-8")
        flagged = {row["series_key"] for row in run.table("series") if row["flagged"]}
        assert flagged and all(key in report for key in flagged)  # the real report, its flagged series shown
        assert report.count('alt="LayerCAM heat map"') >= len(flagged)
        found = leaks({name: report.lower()}, needles(archive.planted))
        assert not found, found


def test_error_files_end_as_error_rows_whose_messages_were_audited(archive, local_runs, s3_run):
    for run in (*local_runs, s3_run.run):
        rows = {relative_uri(row["source_uri"], archive): row for row in run.table("predictions")}
        assert set(rows) == set(archive.planted)
        assert {relative: row["error_code"] for relative, row in rows.items()} == archive.expected_errors
        assert all(rows[relative]["error_message"] for relative, code in archive.expected_errors.items() if code)


def test_pseudonyms_are_stable_under_one_key_and_unrelated_under_another(archive, local_runs, s3_run):
    first, second = (keys_by_file(run, archive) for run in local_runs)
    other_key = keys_by_file(s3_run.run, archive)
    assert len(first) == 17 and first == second and set(other_key) == set(first)  # skipped objects keyed too
    assert len({keys[2] for keys in first.values()}) == 7  # one series key per series: the sample four + three
    assert not {value for keys in first.values() for value in keys} & {value for keys in other_key.values()
                                                                      for value in keys}


def test_the_pseudonym_keys_are_never_written_or_logged(local_runs, s3_run, key_file):
    key_a = key_file.read_text().strip()
    assert len(key_a) == 64 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    keys = {key_a.lower(): "key A (file)", s3_run.pseudonym_key.lower(): "key B (PSEUDONYM_KEY)"}
    for run in (*local_runs, s3_run.run):
        found = leaks(run.texts, keys)
        assert not found, found


def test_aws_credentials_are_never_printed_or_written(s3_run):
    credentials = {s3_run.access_key_id.lower(): "AWS_ACCESS_KEY_ID",
                   s3_run.secret_access_key.lower(): "AWS_SECRET_ACCESS_KEY"}
    assert s3_run.run.summary["output"] == "s3://audit-results/screening"
    found = leaks(s3_run.run.texts, credentials)
    assert not found, found


@pytest.mark.parametrize("job", ["screen", "findings"])
def test_the_job_takes_no_credentials_on_its_command_line(job):
    """Secrets come from files or the environment: an option may name a file that holds them, never take one."""
    done = subprocess.run([sys.executable, "-m", f"jobs.{job}", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    options = set(re.findall(r"--[a-z][a-z-]+", done.stdout))
    assert done.returncode == 0 and {"--pseudonym-key-file", "--findings-credentials-file"} <= options
    assert not [option for option in options if not option.endswith("-file")
                and re.search(r"secret|access|credential|passw|token|aws|profile|session|auth", option)]


def test_skipped_objects_are_recorded_with_their_rule_and_a_reason_that_names_no_patient(archive, local_runs, s3_run):
    for run in (*local_runs, s3_run.run):
        rows = {relative_uri(row["source_uri"], archive): row for row in run.table("predictions")}
        skipped = {relative: row["selection_rule"] for relative, row in rows.items() if row["status"] == "skipped"}
        assert skipped == SKIPPED_CASES
        assert rows["other/spine.dcm"]["skip_reason"] == "the series description names another body part (C-SPINE)"
        assert all(rows[relative]["patient_key"] for relative in SKIPPED_CASES)  # keyed, so a patient's list shows it


REPORTED_IDENTITY = ("PatientID", "PatientName", "PatientBirthDate", "AccessionNumber", "StudyInstanceUID")


def test_the_findings_carry_their_images_identity_which_nothing_the_run_keeps_or_logs_holds(archive, local_runs,
                                                                                          s3_run, pacs):
    """The reports hold what they must; test_no_planted_identifier_reaches_an_output_a_log_or_a_report scans the
    same runs, write-back included, for every planted value."""
    by_sop = {planted["SOPInstanceUID"]: planted for planted in archive.planted.values()}
    for run in (*local_runs, s3_run.run):
        flagged = [row for row in run.table("series") if row["flagged"]]
        assert run.summary["findings"]["stored"] == len(flagged) > 0 and run.summary["findings"]["failed"] == 0
        reports = [dataset for dataset in run.findings if dataset.Modality == "SR"]
        assert len(reports) == len(flagged)
        for dataset in run.findings:  # reports and captures: each of its deciding image's patient and study
            source = (dataset.get("SourceImageSequence") or dataset.CurrentRequestedProcedureEvidenceSequence[0]
                      .ReferencedSeriesSequence[0].ReferencedSOPSequence)[0].ReferencedSOPInstanceUID
            planted = by_sop[source]
            assert {keyword: value_text(dataset.get(keyword)) for keyword in REPORTED_IDENTITY} == {
                keyword: planted[keyword] for keyword in REPORTED_IDENTITY}
    assert [dataset.Modality for dataset in local_runs[0].findings].count("OT") == len(
        [row for row in local_runs[0].table("series") if row["flagged"]])  # run 1's heat-map captures
    if pacs is not None:
        found = leaks(local_runs[1].texts, {pacs.password.lower(): "DICOMWEB_PASSWORD"})
        assert not found, found
