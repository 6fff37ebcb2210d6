"""The morning report, from the real screening job on the sample archive (plus an empty file, a CT series the
selection rules skip, and a flagged JPEG whose name is HTML): written after the commit where the summary says,
self-contained (no URL, no script, every image a data URI), the flagged series most suspicious first with their
keys, rendered by headless Chromium without a console error or a request, rebuilt by ``jobs.query report``; and
``jobs.query patient --patient-id`` finds the sample patient without ever printing the ID. The parts the sample
night does not reach (more cases than get pictures, unfamiliar inputs, a model gone) are rendered on their own."""

from __future__ import annotations

import dataclasses
import html.parser
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree

import numpy as np
import pydicom
import pytest

from pipeline.report import morning
from pipeline.results import views
from pipeline import schema as col
from pipeline.pseudonym import pseudonymize
from tests.conftest import ROOT, SAMPLES, TEST_KEY, job_summary

RUN_DATE = "2026-11-06"
HOSTILE_NAME = "glioma <img src=probe.png> & co.jpg"  # a flagged image whose name is markup
PATIENT_FOLDER = "SAMPLE^ALPHA_MRN-0001"  # an export folder named after a patient, holding a flagged image
SAMPLE_PATIENT_ID = "SAMPLE-MRN-0001"  # the PatientID of samples/archive/dicom/axial-glioma
CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT_COPY = pathlib.Path("/tmp/report-screenshot.png")  # for a person to look at


@dataclasses.dataclass(frozen=True)
class Screened:
    output: pathlib.Path
    summary: dict
    logs: str

    @property
    def report(self) -> pathlib.Path:
        return pathlib.Path(self.summary["report"])


class Links(html.parser.HTMLParser):
    """Every src and href of a document, as (tag, value)."""

    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.extend((tag, value or "") for name, value in attrs if name in ("src", "href"))


def query(*arguments: str, env: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.query", *arguments], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, input=stdin, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("report") / "archive"
    shutil.copytree(SAMPLES / "archive", root)
    shutil.copy(next((root / "loose").glob("glioma-*.jpg")), root / "loose" / HOSTILE_NAME)
    (root / PATIENT_FOLDER).mkdir()
    shutil.copy(next((root / "loose").glob("pituitary-*.jpg")), root / PATIENT_FOLDER / "scan.jpg")
    (root / "bad").mkdir()
    (root / "bad" / "empty.dcm").write_bytes(b"")
    computed_tomography = pydicom.dcmread(next((root / "dicom" / "axial-glioma").glob("*.dcm")))
    computed_tomography.Modality = "CT"
    computed_tomography.SeriesInstanceUID = pydicom.uid.generate_uid()
    computed_tomography.save_as(root / "bad" / "ct.dcm")
    plant_unfamiliar_slice(root / "dicom" / "axial-glioma")
    return root


def plant_unfamiliar_slice(series: pathlib.Path) -> None:
    """One more slice of a flagged series, above its top, holding noise: the model finds it unfamiliar and sets
    it aside, so the night has a flagged series with a set-aside slice."""
    slices = [pydicom.dcmread(path) for path in sorted(series.glob("*.dcm"))]
    unfamiliar = max(slices, key=lambda dataset: float(dataset.ImagePositionPatient[2]))
    unfamiliar.ImagePositionPatient[2] += float(unfamiliar.SliceThickness)
    unfamiliar.SliceLocation = unfamiliar.ImagePositionPatient[2]
    unfamiliar.InstanceNumber = len(slices) + 1
    unfamiliar.SOPInstanceUID = unfamiliar.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    noise = np.random.default_rng(0).integers(0, 4096, (unfamiliar.Rows, unfamiliar.Columns), dtype=np.uint16)
    unfamiliar.PixelData = noise.tobytes()
    unfamiliar.save_as(series / "unfamiliar.dcm")


@pytest.fixture(scope="module")
def screened(archive, model_uri, tmp_path_factory) -> Screened:
    output = tmp_path_factory.mktemp("report") / "results"
    done = subprocess.run([sys.executable, "-m", "jobs.screen", "--input", str(archive), "--output", str(output),
                           "--model", model_uri, "--run-date", RUN_DATE], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PSEUDONYM_KEY": TEST_KEY})
    assert done.returncode == 0, done.stderr[-3000:]
    return Screened(output, job_summary(done.stdout), done.stdout + done.stderr)


@pytest.fixture(scope="module")
def flagged_series_keys(screened) -> list[str]:
    """The run's flagged series keys, most suspicious first, as the tables have them."""
    rows = views.connect(str(screened.output)).sql(
        "SELECT series_key FROM series WHERE flagged ORDER BY tumor_probability DESC, series_key").fetchall()
    return [key for (key,) in rows]


@pytest.mark.slow
def test_the_run_writes_its_report_under_the_output(screened):
    run_id = screened.summary["run_id"]
    assert screened.summary["report"] == str(screened.output / "reports" / RUN_DATE / f"{run_id}.html")
    assert screened.report.is_file() and "report written to" in screened.logs


@pytest.mark.slow
def test_the_report_is_self_contained_and_lists_the_flagged_series_most_suspicious_first(screened,
                                                                                          flagged_series_keys):
    document = screened.report.read_text()
    assert not re.search(r"https?://|<script|@import|url\(", document, re.IGNORECASE)
    links = Links()
    links.feed(document)
    assert links.tags and all(value.startswith("data:") for _, value in links.tags)
    assert {tag for tag, _ in links.tags} == {"img", "link"}  # the images, and the empty icon (no favicon request)
    assert len(flagged_series_keys) >= 2
    positions = [document.index(key) for key in flagged_series_keys]
    assert positions == sorted(positions)
    assert "&lt;img src=probe.png&gt; &amp; co.jpg" in document and "<img src=probe.png>" not in document
    assert "empty_file" in document and "not_mr" in document  # errors by code, skipped by reason
    assert screened.summary["model_version"] in document


@pytest.mark.slow
def test_every_flagged_case_shows_its_deciding_slice_heat_map_and_thumbnails(screened, flagged_series_keys):
    document = screened.report.read_text()
    flagged_images = views.connect(str(screened.output)).sql(
        "SELECT count(*) FROM predictions WHERE flagged AND series_key IS NULL").fetchall()[0][0]
    assert document.count('alt="LayerCAM heat map"') == len(flagged_series_keys) + flagged_images
    assert document.count('alt="deciding slice"') == len(flagged_series_keys) + flagged_images
    assert document.count('<figure class="deciding"><img') == len(flagged_series_keys)  # marked in the strip


@pytest.mark.slow
def test_headless_chromium_renders_the_report_without_errors_or_requests(screened, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"no browser at {CHROMIUM}: install Debian's chromium (`apt-get install chromium`; .ci/run "
                    f"does it where apt-get is available)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (the test extra)")
    problems, requests = [], []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
                if message.type in ("error", "warning") else None)
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("requestfailed", lambda request: problems.append(f"failed request: {request.url[:100]}"))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(screened.report.as_uri(), wait_until="load")
        images_shown = page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    shutil.copy(tmp_path / "report.png", SCREENSHOT_COPY)
    assert problems == []
    assert [url for url in requests if not url.startswith("data:")] == [screened.report.as_uri()]
    assert images_shown and (tmp_path / "report.png").stat().st_size > 50_000


def without_volatile_parts(document: str) -> str:
    """The report without its build time and its pictures' bytes (floating-point order may move a pixel)."""
    document = re.sub(r"Built [0-9-]+ [0-9:]+ UTC", "Built", document)
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png", document)


@pytest.mark.slow
def test_jobs_query_report_rebuilds_the_runs_report(screened, tmp_path):
    rebuilt = tmp_path / "rebuilt.html"
    done = query("report", "--results", str(screened.output), "--run-id", screened.summary["run_id"],
                 "--output", str(rebuilt), env={"PSEUDONYM_KEY": TEST_KEY})  # the key: the same file references
    assert done.returncode == 0 and done.stdout.strip() == str(rebuilt), done.stderr[-2000:]
    assert without_volatile_parts(rebuilt.read_text()) == without_volatile_parts(screened.report.read_text())
    latest = query("report", "--results", str(screened.output), env={"PSEUDONYM_KEY": TEST_KEY})  # the latest run
    assert latest.returncode == 0 and latest.stdout.strip() == str(screened.report)
    missing = query("report", "--results", str(screened.output), "--run-id", "20260101T000000Z-00000000")
    assert missing.returncode == 2 and "no committed run" in missing.stderr


@pytest.mark.slow
def test_a_report_that_fails_leaves_the_run_committed_with_a_warning(screened, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.report.morning"):
        assert morning.publish_run_report(str(screened.output), "20260101T000000Z-00000000", False) is None
    assert "jobs.query report --results" in caplog.text and "is committed" in caplog.text


@pytest.mark.slow
def test_patient_id_finds_the_sample_patients_series_and_is_never_printed(screened, tmp_path):
    expected = views.connect(str(screened.output)).sql(
        "SELECT series_key FROM series WHERE patient_key = ?",
        params=[pseudonymize(SAMPLE_PATIENT_ID, TEST_KEY.encode(), "patient")]).fetchall()
    key_file = tmp_path / "pseudonym.key"
    key_file.write_text(TEST_KEY)
    results = ["--results", str(screened.output), "--format", "json", "--verbose"]
    by_argument = query("patient", *results, "--patient-id", SAMPLE_PATIENT_ID, env={"PSEUDONYM_KEY": TEST_KEY})
    by_stdin = query("patient", *results, "--patient-id", "-", "--pseudonym-key-file", str(key_file),
                     stdin=SAMPLE_PATIENT_ID + "\n", env={"PSEUDONYM_KEY": ""})
    unknown = query("patient", *results, "--patient-id", "SAMPLE-MRN-9999", env={"PSEUDONYM_KEY": TEST_KEY})
    keyless = query("patient", *results, "--patient-id", SAMPLE_PATIENT_ID, env={"PSEUDONYM_KEY": ""})
    for done in (by_argument, by_stdin):
        assert done.returncode == 0, done.stderr[-2000:]
        assert {row["series_key"] for row in json.loads(done.stdout)} == {key for (key,) in expected} != set()
    assert unknown.returncode == 2 and "no results for that patient ID" in unknown.stderr
    assert keyless.returncode == 2 and "needs the pseudonym key" in keyless.stderr
    for done in (by_argument, by_stdin, unknown, keyless):
        assert "MRN-" not in done.stdout + done.stderr
    assert "MRN-" not in screened.report.read_text() and "SAMPLE^" not in screened.report.read_text()


def image_row(index: int, probability: float) -> dict:
    classes = dict(zip(col.PROBABILITY_COLUMNS, (probability, 0.0, 1 - probability, 0.0)))
    return {col.SOURCE_URI: f"s3://archive/loose/{index}.jpg", col.FRAME_INDEX: 0, col.FILE_FORMAT: "jpeg",
            col.PREDICTED_CLASS: "glioma", col.TUMOR_PROBABILITY: probability, col.PATIENT_KEY: None,
            col.SERIES_KEY: None, col.STUDY_DATE: None, col.OOD_SCORE: 40.0 + index, **classes}


def test_cases_beyond_the_cap_are_listed_without_pictures(monkeypatch):
    monkeypatch.setattr(morning, "MAX_CASES_WITH_IMAGES", 2)
    names = morning.FileNames(TEST_KEY.encode(), "run")
    rows = names.label([image_row(index, 0.99 - index / 100) for index in range(5)])
    section = morning.cases_section("Flagged images", [morning.image_case(row) for row in rows], "no heat maps", "none")
    assert section.count('<article class="case">') == 2 and "3 more, without pictures" in section
    assert "the first 2" in section and all(f" · {index}.jpg" in section for index in range(5))
    assert "s3://archive" not in section and len(set(re.findall(r"f-[0-9a-f]{12}", section))) == 5


def test_unfamiliar_inputs_are_listed_with_their_scores():
    rows = [image_row(index, 0.5) for index in range(3)]
    section = morning.unfamiliar_section(rows, ["data:image/png;base64,AAAA", None])
    assert "Unfamiliar inputs" in section and "(3)" in section and "42.00" in section
    assert section.count("<img") == 1 and "Pictures for the first 2" in section


def dicom_copy(path: pathlib.Path, burned_in: str | None, secondary_capture: bool = False) -> str:
    """A sample MR slice saved again with its Burned In Annotation set (or removed), perhaps as a secondary capture."""
    dataset = pydicom.dcmread(next((SAMPLES / "archive" / "dicom" / "axial-glioma").glob("*.dcm")))
    if burned_in is None:
        dataset.pop("BurnedInAnnotation", None)
    else:
        dataset.BurnedInAnnotation = burned_in
    if secondary_capture:
        dataset.SOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    dataset.save_as(path)
    return str(path)


def test_pixels_that_may_carry_burned_in_text_are_never_drawn(tmp_path):
    """A slice whose DICOM file declares burned-in text, or a secondary capture that does not declare none, is
    scored but withheld from the report: no thumbnail, no deciding slice, no heat map, and a note saying why."""
    from model.decode import decode_file
    from model.preprocessing import PreprocessConfig
    from pipeline.report.images import WITHHELD, draw_pictures, unfamiliar_thumbnails

    declared = dicom_copy(tmp_path / "declared.dcm", "YES")
    capture = dicom_copy(tmp_path / "capture.dcm", None, secondary_capture=True)
    says_none = dicom_copy(tmp_path / "says-none.dcm", "NO", secondary_capture=True)
    plain = dicom_copy(tmp_path / "plain.dcm", None)
    assert [decode_file(pathlib.Path(uri).read_bytes(), uri).header["BurnedInText"]
            for uri in (declared, capture, says_none, plain)] == [True, True, False, False]
    row = image_row(0, 0.9)
    series = morning.Case(row, [(declared, 0), (plain, 0), (capture, 0)], [0.9, 0.4, 0.2], 0)
    deciding_shown = morning.Case(row, [(says_none, 0), (capture, 0)], [0.9, 0.2], 0)
    draw_pictures([series, deciding_shown], PreprocessConfig(image_size=96), None)
    assert [series.thumbnails[index] == WITHHELD for index in range(3)] == [True, False, True]
    assert series.withheld and series.deciding_image is None
    card = morning.cases_section("Flagged series", [series, deciding_shown], "no heat maps", "none")
    first, second = card.split('<article class="case">')[1:]
    assert "Pictures withheld" in first and first.count("data:image/png") == 1 and first.count(">withheld<") == 2
    assert deciding_shown.deciding_image is not None and second.count("data:image/png") == 2  # slice and thumbnail
    assert "Pictures withheld" in second  # its other slice is withheld, and the note says why
    thumbnails = unfamiliar_thumbnails([{**row, col.SOURCE_URI: capture}, {**row, col.SOURCE_URI: plain}],
                                       PreprocessConfig(image_size=96))
    assert thumbnails[0] == WITHHELD and thumbnails[1].startswith("data:image/png")
    section = morning.unfamiliar_section([row, row], thumbnails)
    assert section.count("<img") == 1 and "withheld: burned-in text" in section


def test_a_run_whose_model_is_gone_gets_no_heat_maps_and_says_why(tmp_path):
    run = {col.OPTIONS: json.dumps({"model": str(tmp_path / "gone")}), col.MODEL_VERSION: "mri-gone-v9",
           col.MODEL_SHA256: "0" * 64}
    info, note = morning.run_model(run)
    assert info is None and "no heat maps" in note and "mri-gone-v9" in note


def test_the_charts_are_well_formed_svg():
    charts = morning.charts_section({"glioma": 3, "meningioma": 0, "notumor": 9, "pituitary": 1},
                                   [9, 0, 1] + [0] * 16 + [4], {col.ROWS_OOD: 2, col.THRESHOLD: 0.35})
    for svg in re.findall(r"<svg.*?</svg>", charts):
        xml.etree.ElementTree.fromstring(svg)
    assert "threshold 0.35" in charts and ">unfamiliar<" in charts


# --- unfamiliar inputs, set-aside slices and the words of a decision -------------------------------------------


def without_pictures(document: str) -> str:
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png", document)


def in_chromium(document: str, tmp_path: pathlib.Path, script: str):
    """``script`` (a JavaScript expression) evaluated on ``document`` as headless Chromium renders it."""
    if not CHROMIUM.exists():
        pytest.skip(f"no browser at {CHROMIUM}: install Debian's chromium (`apt-get install chromium`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (the test extra)")
    path = tmp_path / "page.html"
    path.write_text(document)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(path.as_uri(), wait_until="load")
        value = page.evaluate(script)
        browser.close()
    return value


def unfamiliar_row(index: int, probability: float, ood_score: float) -> dict:
    return {**image_row(index, probability), col.OOD: True, col.OOD_SCORE: ood_score, col.STATUS: col.STATUS_OK,
            col.RUN_ID: "run", col.RUN_DATE: RUN_DATE}


def test_unfamiliar_inputs_come_highest_tumor_probability_first():
    import duckdb
    import pyarrow as pa

    rows = [unfamiliar_row(0, 0.01, 90.0), unfamiliar_row(1, 0.999, 20.0), unfamiliar_row(2, 0.40, 50.0)]
    connection = duckdb.connect()
    connection.register("rows", pa.Table.from_pylist(rows))
    connection.execute("CREATE TABLE predictions AS SELECT * FROM rows")
    ordered = morning.unfamiliar_inputs(connection, {col.RUN_DATE: RUN_DATE, col.RUN_ID: "run"})
    assert [row[col.TUMOR_PROBABILITY] for row in ordered] == [0.999, 0.40, 0.01]


def set_aside_case() -> "morning.Case":
    """A series of four slices: slice 3 scored 0.88 but was unfamiliar, so the pair 1-2 decided at 0.72."""
    row = {**image_row(0, 0.72), col.ORDERED_SOURCE_URIS: ["a", "b", "c", "d"], col.SERIES_KEY: "series-key",
           col.PATIENT_KEY: "patient-key", col.STUDY_KEY: "study-key", col.MODALITY: "MR", col.SLICES: 4,
           col.SLICES_SCORED: 4, col.SLICES_OOD: 1, col.SLICES_SKIPPED: 0, col.SLICE_ORDER: "position"}
    case = morning.Case(row, [("a", 0), ("b", 0), ("c", 0), ("d", 0)], [0.72, 0.75, 0.88, 0.10], 1)
    case.set_aside = {2: "unfamiliar"}
    case.thumbnails = {index: "data:image/png;base64,iVBORw0KGgo=" for index in range(4)}
    return case


def test_a_series_says_in_words_why_it_was_decided_where_it_was():
    from pipeline.report.cases import decision_words

    words = html.unescape(decision_words(set_aside_case()))
    assert "Decided on slice 2 (0.75) with its neighbour, slice 1 (0.72)" in words and "here 0.72" in words
    assert "Slice 3 (0.88) was set aside as unfamiliar" in words


def test_the_page_shows_tumor_probabilities_of_unfamiliar_inputs_and_marks_set_aside_slices(tmp_path):
    from pipeline.report.html import page

    rows = [unfamiliar_row(1, 0.999, 20.0), unfamiliar_row(0, 0.01, 90.0)]
    for row in rows:
        row["file_label"] = f"f-00000000000{row[col.OOD_SCORE] > 50:d} · scan.jpg"
    sections = [morning.cases_section("Flagged series", [set_aside_case()], "no heat maps", "none"),
                morning.unfamiliar_section(rows, [None, None], 0.35)]
    found = in_chromium(page("test", "", sections), tmp_path, """(() => {
        const table = [...document.querySelectorAll('table')].find(t => t.textContent.includes('unfamiliarity'));
        const column = [...table.rows[0].cells].findIndex(c => c.textContent === 'tumor probability');
        const aside = document.querySelector('.strip figure.set-aside');
        return {probabilities: [...table.rows].slice(1).map(r => r.cells[column].textContent),
                high: [...table.rows].slice(1).map(r => r.className),
                aside: aside && aside.textContent, border: aside && getComputedStyle(aside.querySelector('img'))
                .borderTopStyle, decision: document.querySelector('p.decision').innerText};
    })()""")
    assert found["probabilities"] == ["0.999 ≥ threshold", "0.010"] and found["high"] == ["high", ""]
    assert found["aside"] == "3 · 0.88unfamiliar" and found["border"] == "dashed"
    assert "Slice 3 (0.88) was set aside as unfamiliar" in found["decision"]


@pytest.mark.slow
def test_the_runs_report_marks_its_set_aside_slices_in_the_strips(screened, tmp_path):
    unfamiliar_slices = views.connect(str(screened.output)).sql(
        "SELECT sum(slices_ood) FROM series WHERE flagged").fetchall()[0][0]
    assert unfamiliar_slices >= 1  # the noise slice planted in a flagged series (plant_unfamiliar_slice)
    found = in_chromium(screened.report.read_text(), tmp_path, """(() => ({
        marked: [...document.querySelectorAll('.strip figure.set-aside')].map(f => f.textContent),
        words: [...document.querySelectorAll('p.decision')].map(p => p.innerText)}))()""")
    assert len(found["marked"]) == unfamiliar_slices and all("unfamiliar" in text for text in found["marked"])
    assert len(found["words"]) == len(views.connect(str(screened.output)).sql(
        "SELECT * FROM series WHERE flagged").fetchall())
    assert all(words.startswith("Decided on slice") for words in found["words"])


# --- paths that may carry identity --------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_report_names_files_by_reference_and_never_by_their_folders(screened, archive):
    document = without_pictures(screened.report.read_text())
    for folder in (PATIENT_FOLDER, "MRN-", str(archive), "/loose/", "/dicom/"):
        assert folder not in document
    assert re.search(r"f-[0-9a-f]{12} · scan\.jpg", document)  # the patient folder's image, by reference
    assert "MRN-" not in screened.logs and "SAMPLE^" not in screened.logs


@pytest.mark.slow
def test_jobs_query_path_turns_a_reference_back_into_its_path(screened, archive):
    reference = re.search(r"(f-[0-9a-f]{12}) · scan\.jpg", screened.report.read_text())[1]
    results = ["--results", str(screened.output), "--format", "json"]
    found = query("path", *results, reference, env={"PSEUDONYM_KEY": TEST_KEY})
    assert found.returncode == 0, found.stderr[-2000:]
    expected = str(archive / PATIENT_FOLDER / "scan.jpg")
    assert [(row["source_uri"], row["path"]) for row in json.loads(found.stdout)] == [(expected, expected)]
    keyless = query("path", *results, reference, env={"PSEUDONYM_KEY": ""})
    other_key = query("path", *results, reference, env={"PSEUDONYM_KEY": "another-key-0123456789abcdefghij"})
    malformed = query("path", *results, "SAMPLE^ALPHA", env={"PSEUDONYM_KEY": TEST_KEY})
    assert keyless.returncode == 2 and "needs the pseudonym key" in keyless.stderr
    assert other_key.returncode == 2 and "no file in these results" in other_key.stderr
    assert malformed.returncode == 2 and "SAMPLE" not in malformed.stderr


@pytest.fixture(scope="module")
def pseudonymized(archive, model_uri, tmp_path_factory) -> tuple[Screened, Screened]:
    """Two nights of the archive with --pseudonymize-paths: the first scores, the second finds nothing changed."""
    output = tmp_path_factory.mktemp("report") / "pseudonymized"
    runs = []
    for run_date, extra in (("2026-11-06", []), ("2026-11-07", ["--no-report"])):
        done = subprocess.run([sys.executable, "-m", "jobs.screen", "--input", str(archive), "--output", str(output),
                               "--model", model_uri, "--run-date", run_date, "--pseudonymize-paths", *extra],
                              cwd=ROOT, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "PSEUDONYM_KEY": TEST_KEY})
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(Screened(output, job_summary(done.stdout), done.stdout + done.stderr))
    return runs[0], runs[1]


@pytest.mark.slow
def test_pseudonymize_paths_stores_no_folder_name_below_the_input(pseudonymized, archive):
    first, second = pseudonymized
    connection = views.connect(str(first.output))
    stored = [uri for (uri,) in connection.sql("SELECT source_uri FROM predictions_all").fetchall()]
    stored += [uri for (uris,) in connection.sql("SELECT ordered_source_uris FROM series_all").fetchall()
               for uri in uris]
    assert stored and all(re.fullmatch(re.escape(str(archive)) + r"(/d-[0-9a-f]{16})+/[^/]+", uri) for uri in stored)
    logs = "".join(path.read_text() for path in first.output.rglob("_delta_log/*.json"))
    assert PATIENT_FOLDER not in logs and "/loose/" not in logs and str(archive) in logs  # the statistics too
    assert (second.summary["files_unchanged"], second.summary["rows_written"]) == (first.summary["files_listed"], 0)
    document = without_pictures(first.report.read_text())
    assert PATIENT_FOLDER not in document and document.count('alt="LayerCAM heat map"') >= 1
    assert ">n/a<" not in document  # the report found every slice again through the key
    reference = re.search(r"(f-[0-9a-f]{12}) · scan\.jpg", document)[1]
    found = query("path", "--results", str(first.output), "--format", "json", reference,
                  env={"PSEUDONYM_KEY": TEST_KEY})
    assert found.returncode == 0, found.stderr[-2000:]
    (row,) = json.loads(found.stdout)
    assert row["path"] == str(archive / PATIENT_FOLDER / "scan.jpg") and PATIENT_FOLDER not in row["source_uri"]


# --- the report step's progress ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_report_step_says_what_it_does_and_how_long_it_took(screened):
    assert re.search(r"run \S+: writing its report", screened.logs)
    assert re.search(r"drawing \d+ heat map\(s\)", screened.logs)
    assert re.search(r"\d+ heat map\(s\) drawn in [0-9.]+ s", screened.logs)
    assert re.search(r"report written to \S+ in [0-9.]+ s", screened.logs)
