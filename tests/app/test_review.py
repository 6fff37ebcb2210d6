"""The review app, end to end: the real screening job scores the sample archive once, ``python -m jobs.review``
serves its results on Ray Serve (localhost, a bearer token required), and headless Chromium works through the
worklist as a radiologist would: it opens a case, finds its heat map captioned with what it was measured to be worth,
confirms it with the keyboard, dismisses the next, reloads and finds both states kept, and scores an uploaded file;
the ``reviews`` Delta table is read back. Every page loads without a console error and without a request leaving its
origin, and no page names a patient. On-demand scoring gives the nightly answer for an image and for a zipped
series; uploads are bounded; a request without the token is refused. ``jobs.query reviews`` counts agreement by each
case's latest verdict."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile

import pydicom
import pytest

from infra.ports import free_port
from model.registry import load_model_info
from pipeline.report.images import heat_map_caption
from pipeline.results import views
from pipeline.review import access
from pipeline.review.verdicts import CONFIRMED, DISMISSED, REOPENED, UNSURE, Verdict, VerdictLog, corrected
from tests.conftest import ROOT, SAMPLES, TEST_KEY, job_summary
from tests.pipeline.test_report import CHROMIUM, CHROMIUM_ARGS

RUN_DATE = "2026-11-06"
TOKEN = "review-token-0123456789abcdef"
REVIEWER = "dr-review-test"
UPLOAD_LIMIT_MB = 2
SERIES_FOLDER = SAMPLES / "archive" / "dicom" / "axial-glioma"
SCREENSHOT_COPY = pathlib.Path("/tmp/review-screenshot.png")  # for a person to look at


@dataclasses.dataclass(frozen=True)
class App:
    url: str
    output: pathlib.Path
    process: subprocess.Popen

    def request(self, path: str, data: bytes | None = None, token: str | None = TOKEN,
                headers: dict | None = None) -> tuple[int, bytes]:
        sent = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url + path, data=data, headers=sent),
                                        timeout=120) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


def patient_identities() -> set[str]:
    """Every PatientID and PatientName of the sample archive's DICOM files."""
    found = set()
    for path in (SAMPLES / "archive" / "dicom").rglob("*.dcm"):
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        found.update(str(value) for value in (dataset.get("PatientID"), dataset.get("PatientName")) if value)
    return found


@pytest.fixture(scope="module")
def screened(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("review")
    shutil.copytree(SAMPLES / "archive", root / "archive")
    output = root / "results"
    done = subprocess.run([sys.executable, "-m", "jobs.screen", "--input", str(root / "archive"), "--output",
                           str(output), "--run-date", RUN_DATE, "--no-report"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "PSEUDONYM_KEY": TEST_KEY})
    assert done.returncode == 0, done.stderr[-3000:]
    job_summary(done.stdout)
    return output


@pytest.fixture(scope="module")
def app(screened, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("token") / "review.token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    log = (tmp_path_factory.mktemp("log") / "review.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "jobs.review", "--results", str(screened), "--port", str(port), "--reviewer",
         REVIEWER, "--token-file", str(token_file), "--max-upload-mb", str(UPLOAD_LIMIT_MB)], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "PSEUDONYM_KEY": TEST_KEY})
    started = App(f"http://127.0.0.1:{port}", screened, process)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        log.seek(0)
        if "listening on" in log.read():
            break
        time.sleep(2)
    log.seek(0)
    assert process.poll() is None and "listening on" in log.read(), log.read()[-3000:]
    yield started
    process.send_signal(signal.SIGINT)
    stdout, _ = process.communicate(timeout=120)
    log.seek(0)
    assert process.returncode == 0, log.read()[-3000:]
    assert json.loads(stdout.strip().splitlines()[-1])["reviewer"] == REVIEWER


def nightly_probability(output: pathlib.Path, file_name: str) -> float:
    (value,) = views.connect(str(output)).sql(
        "SELECT tumor_probability FROM predictions WHERE source_uri LIKE ?", params=[f"%/{file_name}"]).fetchall()[0]
    return value


def verdict_by_key(page, key: str, case_url: str) -> None:
    """Press a verdict's key on a case page: its form posts, and the answer leads back to the case."""
    with page.expect_navigation():
        page.keyboard.press(key)
    page.wait_for_url(case_url, wait_until="load")


@pytest.mark.slow
def test_a_radiologist_works_through_the_worklist_in_chromium(app, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"no browser at {CHROMIUM}: install Debian's chromium (`apt-get install chromium`; .ci/run "
                    f"does it where apt-get is available)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (the test extra)")
    problems, requests, documents = [], [], []
    image = next((SAMPLES / "archive" / "loose").glob("glioma-*.jpg"))
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900},
                                      extra_http_headers={"Authorization": f"Bearer {TOKEN}"})
        page = context.new_page()
        page.set_default_timeout(120_000)  # a case page re-reads its slices and draws a heat map
        page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
                if message.type in ("error", "warning") else None)
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("requestfailed", lambda request: problems.append(f"failed request: {request.url[:100]}"))
        page.on("request", lambda request: requests.append(request.url))

        page.goto(app.url + "/", wait_until="load")
        series_links = page.locator("#worklist tr.item[data-kind=series] a.case-link")
        assert series_links.count() >= 2 and page.locator("#unfamiliar, h2:has-text('Unfamiliar')").count() >= 1
        probabilities = [float(text) for text in page.locator("#worklist td.prob").all_inner_texts()]
        assert probabilities == sorted(probabilities, reverse=True)  # most suspicious first
        documents.append(page.content())

        series_links.first.click()  # open a case
        page.wait_for_selector("#state")
        assert page.locator("img[alt='LayerCAM heat map']").count() == 1
        caption = page.locator("figure:has(img[alt='LayerCAM heat map']) figcaption").inner_text()
        assert caption == heat_map_caption(load_model_info()) and "peak fell inside the outlined tumor" in caption
        nav, link = (page.locator(selector).bounding_box() for selector in ("nav.toolbar", "a#worklist"))
        assert nav["height"] >= link["height"] and nav["width"] > 600  # the report's .bar style does not squeeze it
        assert page.locator("img[alt='deciding slice']").count() == 1
        first_case = page.url
        documents.append(page.content())
        verdict_by_key(page, "c", first_case)  # confirm
        assert page.inner_text("#state") == CONFIRMED
        with page.expect_navigation():
            page.keyboard.press("j")  # the next case
        second_case = page.url
        assert second_case != first_case
        documents.append(page.content())
        verdict_by_key(page, "d", second_case)  # dismiss
        assert page.inner_text("#state") == DISMISSED
        page.reload(wait_until="load")
        assert page.inner_text("#state") == DISMISSED
        with page.expect_navigation():
            page.keyboard.press("k")  # back to the first
        assert page.url == first_case and page.inner_text("#state") == CONFIRMED

        with page.expect_navigation():
            page.keyboard.press("Escape")  # the worklist keeps the states
        states = page.locator("#worklist .state").all_inner_texts()
        assert states.count(CONFIRMED) == 1 and states.count(DISMISSED) == 1
        documents.append(page.content())

        page.set_input_files("#upload-file", str(image))
        page.click("#upload button[type=submit]")
        page.wait_for_selector("#upload-images")
        row = page.locator("#upload-images tr").nth(1).locator("td").all_inner_texts()
        assert row[0] == image.name and float(row[2]) == round(nightly_probability(app.output, image.name), 3)
        documents.append(page.content())
        page.goto(first_case, wait_until="load")
        page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
        browser.close()
    shutil.copy(tmp_path / "review.png", SCREENSHOT_COPY)
    assert problems == []
    assert [url for url in requests if not url.startswith((app.url + "/", "data:"))] == []
    assert len(documents) == 5
    for document in documents:
        assert not any(identity in document for identity in patient_identities())
        assert "/archive/" not in document  # no folder of a file, only its reference and name

    rows = VerdictLog(str(app.output)).rows().to_pylist()
    assert [row["verdict"] for row in rows] == [CONFIRMED, DISMISSED]
    assert {row["reviewer"] for row in rows} == {REVIEWER} and all(row["run_id"] for row in rows)
    assert [row["case_key"] for row in rows] == [first_case.rsplit("/", 1)[1], second_case.rsplit("/", 1)[1]]


@pytest.mark.slow
def test_on_demand_scoring_gives_the_nightly_answer_for_an_image_and_a_zipped_series(app):
    image = next((SAMPLES / "archive" / "loose").glob("meningioma-*.jpg"))
    status, body = app.request(f"/api/score?name={image.name}", image.read_bytes())
    assert status == 200, body[:500]
    (scored,) = json.loads(body)["images"]
    assert scored["tumor_probability"] == pytest.approx(nightly_probability(app.output, image.name), abs=1e-5)

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as packed:
        for path in sorted(SERIES_FOLDER.glob("*.dcm")):
            packed.write(path, f"SAMPLE^PATIENT/{path.name}")
    status, body = app.request("/api/score?name=series.zip", archive.getvalue())
    assert status == 200, body[:500]
    answer = json.loads(body)
    (series,) = answer["series"]
    nightly = views.connect(str(app.output)).sql(
        "SELECT tumor_probability, slices, predicted_class FROM series WHERE list_contains(ordered_source_uris, ?)",
        params=[str(app.output.parent / "archive" / "dicom" / "axial-glioma" / series["ordered_files"][0])]
    ).fetchall()
    assert len(nightly) == 1
    assert series["tumor_probability"] == pytest.approx(nightly[0][0], abs=1e-5)
    assert (series["slices"], series["predicted_class"]) == nightly[0][1:]
    assert "SAMPLE" not in body.decode() and "key" not in body.decode()  # no folder, no pseudonymous key


@pytest.mark.slow
def test_uploads_are_bounded_and_requests_without_the_token_refused(app):
    status, _ = app.request("/api/score?name=big.png", b"\x89PNG" + b"\x00" * (UPLOAD_LIMIT_MB * 2**20))
    assert status == 413
    status, body = app.request("/api/score?name=a.zip", b"PK\x03\x04 not a zip")
    assert status == 400 and b"zip" in body
    for token in (None, "wrong-token-0123456789"):
        status, body = app.request("/", token=token)
        assert status == 401 and b"bearer token" in body
        assert app.request("/api/score?name=x.jpg", b"x", token=token)[0] == 401
    status, _ = app.request("/", headers={"Origin": "http://elsewhere.example"}, data=b"verdict=confirmed")
    assert status in (403, 405)
    assert app.request("/")[0] == 200


def test_off_loopback_the_app_needs_a_token_file():
    done = subprocess.run([sys.executable, "-m", "jobs.review", "--results", "out/none", "--host", "0.0.0.0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--token-file" in done.stderr


def test_who_is_answered():
    loopback = {"host": "127.0.0.1:8000"}
    assert access.refusal("GET", "http", loopback, None) is None
    assert access.refusal("GET", "http", {"host": "rebound.example:8000"}, None)[0] == 421
    assert access.refusal("GET", "http", {"host": "10.1.2.3:8000"}, TOKEN)[0] == 401
    assert access.refusal("GET", "http", {"host": "10.1.2.3:8000", "authorization": f"Bearer {TOKEN}"}, TOKEN) is None
    posted = {**loopback, "origin": "http://elsewhere.example"}
    assert access.refusal("POST", "http", posted, None)[0] == 403
    assert access.refusal("POST", "http", {**loopback, "sec-fetch-site": "cross-site"}, None)[0] == 403
    assert access.refusal("POST", "http", {**loopback, "origin": "http://127.0.0.1:8000",
                                           "sec-fetch-site": "same-origin"}, None) is None


@pytest.mark.slow
def test_jobs_query_reviews_counts_each_case_by_its_latest_verdict(screened, tmp_path):
    output = tmp_path / "results"
    shutil.copytree(screened, output, ignore=shutil.ignore_patterns("reviews"))
    log = VerdictLog(str(output))
    shared = ("run-1", RUN_DATE)
    log.append(Verdict(*shared, "series", "a" * 32, UNSURE, "dr-a", "glioma", 0.9))
    log.append(Verdict(*shared, "series", "a" * 32, CONFIRMED, "dr-a", "glioma", 0.9))  # the latest counts
    log.append(corrected(*shared, "series", "b" * 32, "pituitary", "dr-a", "glioma", 0.8))
    log.append(corrected(*shared, "image", "f-000000000001", "notumor", "dr-b", "meningioma", 0.7))
    log.append(Verdict(*shared, "image", "f-000000000002", DISMISSED, "dr-b", "meningioma", 0.6))
    log.append(Verdict(*shared, "image", "f-000000000002", REOPENED, "dr-b", "meningioma", 0.6))  # not counted
    done = subprocess.run([sys.executable, "-m", "jobs.query", "reviews", "--results", str(output), "--by", "class",
                           "--format", "json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    by_class = {row["predicted_class"]: row for row in json.loads(done.stdout)}
    assert {name: (row["cases_reviewed"], row["confirmed"], row["dismissed"], row["class_kept"],
                   row["class_corrected"]) for name, row in by_class.items()} == {
        "glioma": (2, 2, 0, 1, 1), "meningioma": (1, 0, 1, 0, 0)}
    assert by_class["glioma"]["share_confirmed"] == 1.0 and by_class["meningioma"]["share_confirmed"] == 0.0
    everything = subprocess.run([sys.executable, "-m", "jobs.query", "reviews", "--results", str(output)],
                                cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert everything.returncode == 0 and re.search(r"\ball\s+3\s+2\s+1\s+0\b", everything.stdout), everything.stdout
    assert len(log.rows()) == 6  # appended, never rewritten
