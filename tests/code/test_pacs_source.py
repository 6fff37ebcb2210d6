"""A PACS as a source, without a server: how its addresses are written and read, which study dates a night searches,
what a multipart answer holds, how big a listed instance is said to be, and what the selection rules can decide on a
search's study and series attributes alone (the default rules, on real sample headers cut down to those
attributes)."""

import time

import pydicom
import pytest

from model.decode import dicom_attributes
from pipeline.sources import pacs
from pipeline.sources.selection import load_rules
from pipeline.screening.config import ScreenConfig, study_dates
from tests.conftest import SAMPLES
from tests.support.corpus import edit_dataset

RULES = load_rules()
ROOT = "dicomweb+https://pacs.example.org:8443/dicom-web"
STUDY, SERIES, SOP = "1.2.826.0.1", "1.2.826.0.1.2", "1.2.826.0.1.2.3"


def test_an_instance_address_is_written_and_read_back():
    address = pacs.PacsAddress(ROOT, STUDY, SERIES, SOP)
    assert address.uri == f"{ROOT}/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
    assert pacs.PacsAddress.parse(address.uri) == address
    assert address.server == "https://pacs.example.org:8443/dicom-web"
    assert pacs.PacsAddress.parse(ROOT + "/") == pacs.PacsAddress(ROOT)
    assert pacs.PacsAddress.parse(f"{ROOT}/studies/{STUDY}").path == f"/studies/{STUDY}"


@pytest.mark.parametrize("uri", ["dicomweb+ftp://pacs/dicom-web", f"{ROOT}/studies/1.2.x", f"{ROOT}?limit=1",
                                 "https://pacs.example.org/dicom-web", f"{ROOT}/studies/{STUDY}/instances/{SOP}"])
def test_what_is_not_a_dicomweb_address_is_refused_with_the_form_to_write(uri):
    with pytest.raises(pacs.storage.StorageError, match="dicomweb\\+https://host/dicom-web"):
        pacs.PacsAddress.parse(uri)


def test_only_an_instance_address_is_read():
    with pytest.raises(pacs.storage.StorageError, match="names no DICOM instance"):
        pacs.PacsAddress.of_instance(f"{ROOT}/studies/{STUDY}/series/{SERIES}")


@pytest.mark.parametrize("first, last, searched", [
    (None, None, ("20261202", "20261202")), ("2026-11-01", None, ("20261101", "20261202")),
    (None, "2026-11-04", ("20261104", "20261104")), ("2026-12-10", None, ("20261210", "20261210")),
    ("2026-11-01", "2026-11-04", ("20261101", "20261104"))])
def test_a_night_searches_the_run_date_unless_told_otherwise(first, last, searched):
    config = ScreenConfig(inputs=(ROOT,), output="out", study_date_from=first, study_date_to=last)
    assert study_dates(config, "2026-12-02") == searched


def test_a_reversed_date_range_or_a_modality_that_is_no_code_is_refused():
    with pytest.raises(ValueError, match="after"):
        ScreenConfig(inputs=(ROOT,), output="out", study_date_from="2026-11-04", study_date_to="2026-11-01")
    with pytest.raises(ValueError, match="modality codes"):
        ScreenConfig(inputs=(ROOT,), output="out", study_modalities=("mr; drop",))


def test_the_first_part_of_a_multipart_answer_is_the_instance():
    body = b"--xyz\r\nContent-Type: application/dicom\r\n\r\n\x00DICM\r\n--xy\r\n--xyz--\r\n"
    assert pacs.first_part(body, 'multipart/related; type="application/dicom"; boundary=xyz', "u") == \
        b"\x00DICM\r\n--xy"
    assert pacs.first_part(b"plain", "application/dicom", "u") == b"plain"
    with pytest.raises(pacs.storage.StorageError, match="no instance"):
        pacs.first_part(b"--xyz--\r\n", "multipart/related; boundary=xyz", "u")


def test_a_listed_instance_is_as_large_as_its_pixels_say():
    values = {"00280010": [256], "00280011": [192], "00280100": [16]}
    answer = {tag: {"vr": "US", "Value": value} for tag, value in values.items()}
    assert pacs.estimated_size(answer) == 256 * 192 * 2
    assert pacs.estimated_size({**answer, "00280008": {"vr": "IS", "Value": ["20"]}}) == 256 * 192 * 2 * 20
    assert pacs.estimated_size({}) == 0


def searched(dataset: pydicom.Dataset) -> tuple[dict, frozenset]:
    """``dataset`` as a search sees it: its study and series attributes only."""
    kept = pydicom.Dataset()
    for element in dataset:
        if element.keyword in pacs.STUDY_KEYWORDS | pacs.SERIES_KEYWORDS:
            kept.add(element)
    return dicom_attributes(kept, RULES.keywords), frozenset(element.keyword for element in kept)


def sample_header() -> pydicom.Dataset:
    path = next((SAMPLES / "archive" / "dicom" / "axial-glioma").glob("*.dcm"))
    return pydicom.dcmread(path, stop_before_pixels=True)


@pytest.mark.parametrize("edits, rule", [
    ({"Modality": "CT"}, "not_mr"), ({"BodyPartExamined": "KNEE"}, "not_head"),
    ({"SeriesDescription": "sag T2 lumbar spine"}, "not_head_series"),
    ({"SeriesDescription": "3-plane loc"}, "localizer"),
    ({"StudyDescription": "MRI knee left"}, "not_head_study")])
def test_a_series_the_rules_skip_on_its_search_attributes_is_skipped_as_its_header_would_be(edits, rule):
    header = edit_dataset(sample_header(), edits)
    decision = RULES.decide_before_retrieval(*searched(header))
    assert decision.rule == rule and decision.skips
    assert RULES.decide(dicom_attributes(header, RULES.keywords)) == decision


@pytest.mark.parametrize("edits", [{}, {"BodyPartExamined": "HEAD"}, {"SeriesDescription": "ax flair brain"}])
def test_brain_mr_is_left_to_its_header(edits):
    assert RULES.decide_before_retrieval(*searched(edit_dataset(sample_header(), edits))) is None


def test_what_the_search_does_not_tell_is_never_taken_for_absent():
    header = edit_dataset(sample_header(), {"ImageType": ["DERIVED", "SECONDARY"], "Rows": 32})
    assert RULES.decide(dicom_attributes(header, RULES.keywords)).skips
    assert RULES.decide_before_retrieval(*searched(header)) is None  # ImageType and Rows belong to the instance


def test_a_rule_that_may_score_on_what_is_unknown_leaves_the_decision_to_the_header(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n"
                     "  - {name: keep_thin, action: score, all: [{keyword: SliceThickness, range: [null, 2]}]}\n"
                     "  - {name: not_mr, action: skip, all: [{keyword: Modality, not_in: [MR]}]}\n")
    site = load_rules(str(rules))
    assert site.decide_before_retrieval(*searched(edit_dataset(sample_header(), {"Modality": "CT"}))) is None


def test_a_paced_process_spaces_its_requests_evenly():
    pace = pacs.Pace(20.0)
    started = time.monotonic()
    for _ in range(6):
        pace.wait()
    assert time.monotonic() - started >= 5 / 20 - 0.01
    unpaced = pacs.Pace(None)
    started = time.monotonic()
    for _ in range(1000):
        unpaced.wait()
    assert time.monotonic() - started < 0.1
