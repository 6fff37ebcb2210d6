"""Header values that are not identity but are stored or quoted: a date is a date, a code string a code string, and
a name written into StudyDate, Modality, BodyPartExamined or ImageType (files written by pydicom, read by the real
decoding stage under the default selection rules) reaches no output row."""

import warnings

import pydicom
import pytest

from model.decode import DecodeLimits
from model.header_values import INVALID_CODE_STRING, FREE_TEXT, code_string, dicom_date, quotable
from model.preprocessing import PreprocessConfig
from pipeline import schema as col
from pipeline.sources.selection import load_rules
from pipeline.scoring.stages import StageContext, file_rows
from tests.conftest import SAMPLES

NAME = "Quxleyvant^Zorbinella"  # a patient's name as PN writes it: family^given
NAME_PARTS = ("QUXLEYVANT", "ZORBINELLA")


@pytest.mark.parametrize("text, stored", [
    ("20261103", "20261103"), (" 20240229 ", "20240229"), ("20230229", None), ("20261301", None),
    ("2026.11.03", "20261103"), ("2026.1103", None), ("2026-11-03", None), ("202611", None), ("", None), (None, None), (NAME, None)])
def test_a_date_is_kept_only_as_a_real_day_written_yyyymmdd(text, stored):
    assert dicom_date(text) == stored


@pytest.mark.parametrize("text, stored", [
    ("MR", "MR"), (" HEAD NECK ", "HEAD NECK"), ("T1_MPRAGE 3D", "T1_MPRAGE 3D"), ("", None),
    ("mr", INVALID_CODE_STRING), (NAME, INVALID_CODE_STRING), ("ABCDEFGHIJKLMNOPQ", INVALID_CODE_STRING),
    ("HEAD\x1b[31m", INVALID_CODE_STRING), ("KNEE-LEFT", INVALID_CODE_STRING)])
def test_a_code_string_is_kept_only_in_its_format(text, stored):
    assert code_string(text) == stored


def test_a_reason_quotes_each_value_in_the_format_of_its_vr_and_never_free_text():
    assert quotable("Rows", "48") == "48" and quotable("Rows", "4x8") == "(invalid number)"
    assert quotable("SOPClassUID", "1.2.840.10008.5.1.4.1.1.4") == "1.2.840.10008.5.1.4.1.1.4"
    assert quotable("StudyDate", NAME) == "(invalid date)"
    assert quotable("SeriesDescription", "AX T2 " + NAME) == FREE_TEXT
    assert quotable("NoSuchKeyword", "X") == FREE_TEXT


def write_edited_brain_mr(path, changes: dict) -> None:
    """A sample brain MR slice with ``changes`` to its header, written by pydicom (which warns about, and writes,
    values outside their VR's format)."""
    dataset = pydicom.dcmread(next((SAMPLES / "archive" / "dicom" / "axial-glioma").glob("*.dcm")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in changes.items():
            setattr(dataset, keyword, value)
        dataset.save_as(path, enforce_file_format=True)


NAMED = {  # file: (header changes, the status and rule of its row, the value stored or quoted in the name's place)
    "modality.dcm": ({"Modality": NAME}, ("skipped", "not_mr"), "modality (invalid code string), not MR"),
    "body-part.dcm": ({"BodyPartExamined": NAME}, ("skipped", "not_head"),
                      "body part (invalid code string), not the head"),
    "image-type.dcm": ({"ImageType": ["DERIVED", "PRIMARY", NAME]}, ("skipped", "derived"),
                       "a derived or secondary image (ImageType DERIVED\\PRIMARY\\(invalid code string))"),
    "study-date.dcm": ({"StudyDate": NAME}, ("ok", "brain_mr"), None),
    "all-at-once.dcm": ({"StudyDate": NAME, "Modality": NAME, "BodyPartExamined": NAME}, ("skipped", "not_mr"),
                        "modality (invalid code string), not MR"),
}


def test_a_name_in_a_coded_or_dated_element_reaches_no_row(tmp_path):
    context = StageContext("run", "2026-11-08", PreprocessConfig(image_size=64), DecodeLimits(), b"k" * 32, 0.5,
                           "model", "sha", load_rules())
    for name, (changes, outcome, reason) in NAMED.items():
        write_edited_brain_mr(tmp_path / name, changes)
        [row] = file_rows(str(tmp_path / name), context)
        assert (row[col.STATUS], row[col.SELECTION_RULE]) == outcome, (name, row.get(col.ERROR_MESSAGE))
        assert row.get(col.SKIP_REASON) == reason, name
        assert row[col.STUDY_DATE] == (None if "StudyDate" in changes else "20261101"), name
        assert row[col.MODALITY] == (INVALID_CODE_STRING if "Modality" in changes else "MR"), name
        values = " ".join(str(value) for key, value in row.items() if key != col.IMAGE).upper()
        assert not [part for part in NAME_PARTS if part in values], (name, row)


def test_an_invalid_uid_is_decoded_without_pydicom_logging_or_warning_its_value(tmp_path, caplog):
    """pydicom's reading validation quotes an invalid value as it stands (a UID carrying letters): decoding a file
    logs and warns nothing of it, in the driver's report as in a worker."""
    import logging

    from model.decode import decode_file

    planted = "1.2.3.4.QUXLEYVANT"
    write_edited_brain_mr(tmp_path / "uid.dcm", {"StudyInstanceUID": planted, "SeriesInstanceUID": planted + ".9"})
    caplog.clear()  # writing it warned; reading it must not
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        decoded = decode_file((tmp_path / "uid.dcm").read_bytes(), "uid.dcm")
    assert decoded.header["StudyInstanceUID"] == planted  # read, for the keyed pseudonym, and never shown
    assert "QUXLEYVANT" not in caplog.text and not [w for w in warned if "QUXLEYVANT" in str(w.message)]
