"""The brain-MRI selection rules: which DICOM objects reach the model, judged on real headers (pydicom's test files,
the sample archive) and on edited copies, and how a rules file is checked before a run starts."""

import pathlib
import warnings

import pydicom
import pytest
from pydicom.data import get_testdata_files

from model.decode import dicom_attributes
from pipeline.sources.selection import ALL, DEFAULT_RULES_URI, SelectionRulesError, load_rules
from tests.conftest import SAMPLES
from tests.support.corpus import edit_dataset

RULES = load_rules()


def decide(dataset: pydicom.Dataset):
    return RULES.decide(dicom_attributes(dataset, RULES.keywords))


def header(path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def brain_mr() -> pydicom.Dataset:
    return header(next((SAMPLES / "archive" / "dicom" / "axial-glioma").glob("*.dcm")))


def image_objects():
    for name in get_testdata_files():
        try:
            dataset = header(name)
        except Exception:  # some shipped files are deliberately broken
            continue
        if "Rows" in dataset and "Modality" in dataset:
            yield pathlib.Path(name).name, dataset


def test_every_sample_archive_object_is_brain_mr():
    decisions = {decide(header(path)).rule for path in (SAMPLES / "archive" / "dicom").rglob("*.dcm")}
    assert decisions == {"brain_mr"}


def test_every_shipped_object_of_another_modality_is_skipped_naming_it():
    checked = 0
    for name, dataset in image_objects():
        if dataset.Modality == "MR":
            continue
        decision = decide(dataset)
        assert decision.skips and decision.rule == "not_mr", name
        assert f"modality {dataset.Modality}" in decision.reason, name
        checked += 1
    assert checked >= 20  # CT, US, CR, NM, OT, SEG, RTDOSE among pydicom's files


def test_shipped_mr_localizers_and_derived_images_are_skipped():
    seen = {}
    for name, dataset in image_objects():
        if dataset.Modality != "MR":
            continue
        image_type = [str(value).strip() for value in dataset.get("ImageType") or []]
        description = str(dataset.get("SeriesDescription", ""))
        expected = ("localizer" if "LOCALIZER" in description.upper() or "PILOT" in description.upper()
                    else "derived" if image_type[:1] == ["DERIVED"] else None)
        if expected:
            seen[name] = decide(dataset).rule
            assert seen[name] == expected, (name, image_type, description)
    assert {"localizer", "derived"} <= set(seen.values())


@pytest.mark.parametrize("changes, rule", [
    ({"Modality": "CT"}, "not_mr"),
    ({"Modality": None}, "not_mr"),
    ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, "localizer"),
    ({"SeriesDescription": "3-plane loc"}, "localizer"),
    ({"ImageType": ["DERIVED", "PRIMARY", "ADC"]}, "derived"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, "secondary_capture"),
    ({"BodyPartExamined": "KNEE"}, "not_head"),
    ({"BodyPartExamined": "BRAIN"}, "brain_mr"),
    ({"SeriesDescription": "SAG T2 C-SPINE"}, "not_head_series"),
    ({"SeriesDescription": "AX T2 BRAIN", "StudyDescription": "MRI BRAIN AND C-SPINE"}, "brain_mr"),
    ({"StudyDescription": "MRI LUMBAR SPINE"}, "not_head_study"),
    ({"Rows": 48}, "small_matrix"),
    ({"Rows": 64}, "brain_mr"),
])
def test_each_default_rule_on_an_edited_brain_mr_header(changes, rule):
    decision = decide(edit_dataset(brain_mr(), changes))
    assert decision.rule == rule
    assert decision.skips == (rule != "brain_mr")


def test_reasons_quote_the_matched_text_and_values():
    dataset = brain_mr()
    dataset.SeriesDescription = "SAG T2 C-SPINE"
    assert "C-SPINE" in decide(dataset).reason
    dataset = brain_mr()
    dataset.BodyPartExamined = "KNEE"
    assert decide(dataset).reason == "body part KNEE, not the head"


def test_all_scores_every_object():
    rules = load_rules(ALL)
    dataset = brain_mr()
    dataset.Modality = "CT"
    assert not rules.decide(dicom_attributes(dataset, rules.keywords)).skips


def write_rules(tmp_path, text: str) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, message", [
    ("rules: [{name: a, action: skip, all: [{keyword: PatientName, equals: X}]}]", "patient identity"),
    ("rules: [{name: a, action: drop}]", "action must be"),
    ("rules: [{name: a, action: skip, all: [{keyword: Modality, matches: '('}]}]", "not a regular expression"),
    ("rules: [{name: a, action: skip, all: [{keyword: Rows, range: [1]}]}]", "range must be"),
    ("rules: [{name: a, action: skip, all: [{keyword: Rows, equals: 1, range: [1, 2]}]}]", "exactly one of"),
    ("rules: [{name: a, action: skip, reason: 'bad {PatientID}'}]", "may quote only"),
    ("rules: {name: a}", "a list under 'rules'"),
    ("rules: [: :", "not valid YAML"),
])
def test_a_bad_rules_file_is_refused_with_a_sentence(tmp_path, text, message):
    with pytest.raises(SelectionRulesError, match=message):
        load_rules(write_rules(tmp_path, text))


def test_a_sites_own_rules_use_ranges_and_lists(tmp_path):
    rules = load_rules(write_rules(tmp_path, """
rules:
  - {name: thin, action: skip, reason: "slices of {value} mm", all: [{keyword: SliceThickness, range: [null, 1.5]}]}
  - {name: scanners, action: score, all: [{keyword: Modality, equals: [MR, CT]}]}
  - {name: rest, action: skip}
"""))
    dataset = brain_mr()
    dataset.SliceThickness = 1.0
    assert rules.decide(dicom_attributes(dataset, rules.keywords)).reason == "slices of 1.0 mm"
    dataset.SliceThickness = 5.0
    assert rules.decide(dicom_attributes(dataset, rules.keywords)).rule == "scanners"
    dataset.Modality = "US"
    assert rules.decide(dicom_attributes(dataset, rules.keywords)).rule == "rest"


def test_the_default_rules_file_is_the_bundled_one():
    assert pathlib.Path(DEFAULT_RULES_URI).is_file() and RULES.source == DEFAULT_RULES_URI
