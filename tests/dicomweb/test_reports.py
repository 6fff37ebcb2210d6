"""Screening reports built from real sample DICOM headers read back with pydicom and highdicom: the source's patient
and study, the deciding image (and frame), the verdict, the probabilities, the model and the words."""

import copy
import dataclasses
import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from model.labels import CLASS_NAMES
from pipeline.dicomweb.findings import DISCLAIMER, SeriesFinding
from pipeline.dicomweb.reports import (LOCAL_SCHEME, QUALITATIVE_EVALUATIONS, report_datasets, screening_report)
from tests.dicomweb.conftest import RUN_ID, read_header, series_files, series_rows


def round_trip(dataset: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def texts(report: hd.sr.ComprehensiveSR, name) -> list[str]:
    return [item.TextValue for item in hd.sr.utils.find_content_items(report, name=name, recursive=True)]


def test_report_parses_back_with_the_source_identity_the_deciding_image_the_model_and_the_words(
        glioma_case, screening_model):
    finding, header = glioma_case
    stored = round_trip(screening_report(finding, screening_model, header))
    report = hd.sr.ComprehensiveSR.from_dataset(stored)
    assert stored.SOPClassUID == pydicom.uid.ComprehensiveSRStorage and stored.Modality == "SR"
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber",
                    "StudyDate"):
        assert stored.get(keyword) == header.get(keyword), keyword
    assert stored.SeriesInstanceUID != header.SeriesInstanceUID
    assert (stored.Manufacturer, stored.SeriesDescription) == ("mri-screen", DISCLAIMER)
    assert stored.VerificationFlag == "UNVERIFIED"
    group, = report.content.get_image_measurement_groups()
    source, = group.source_images
    assert (source.referenced_sop_instance_uid, source.referenced_sop_class_uid) == (header.SOPInstanceUID,
                                                                                     header.SOPClassUID)
    assert source.referenced_frame_numbers is None
    evaluations = {item.name.meaning: item.value.meaning for item in group.get_qualitative_evaluations()}
    assert evaluations == {"Brain tumor suspected": "Present", "Most likely class": "Glioma"}
    measured = {item.name.value: item.value for item in group.get_measurements()}
    assert measured["series-tumor-probability"] == pytest.approx(finding.tumor_probability)
    assert [measured[f"probability-{name}"] for name in CLASS_NAMES] == pytest.approx(finding.class_probabilities)
    assert measured["operating-point"] == pytest.approx(screening_model.operating_point, abs=1e-6)
    assert texts(report, codes.DCM.AlgorithmName) == [screening_model.name]
    assert texts(report, codes.DCM.AlgorithmVersion) == ["mri-bilstm-ensemble-v4"]
    assert "0.180841" in texts(report, codes.DCM.AlgorithmParameters)[0]
    words, = hd.sr.utils.find_content_items(report, name=QUALITATIVE_EVALUATIONS)
    assert [item.TextValue for item in words.ContentSequence] == [DISCLAIMER]
    assert stored.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == LOCAL_SCHEME
    evidence = stored.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID


def test_a_multiframe_deciding_image_is_referenced_with_its_frame(screening_model):
    files = series_files("axial-notumor-multiframe")
    series, prediction = series_rows(files, deciding=0, frame=2, flagged=False,
                                     probabilities=(0.1, 0.05, 0.8, 0.05))
    finding = SeriesFinding.from_rows(series, prediction)
    report = hd.sr.ComprehensiveSR.from_dataset(
        round_trip(screening_report(finding, screening_model, read_header(files[0]))))
    group, = report.content.get_image_measurement_groups()
    assert group.source_images[0].referenced_frame_numbers == [3]
    assert {item.value.meaning for item in group.get_qualitative_evaluations()} == {"Absent", "No tumor"}
    library = hd.sr.utils.find_content_items(report, name=codes.DCM.ImagePositionPatientZ, recursive=True)
    assert [item.MeasuredValueSequence[0].NumericValue for item in library] == [115.0]  # the third frame's place


def test_uids_are_the_same_for_every_run_of_a_date_and_differ_for_another_date_or_series(glioma_case,
                                                                                          screening_model):
    finding, header = glioma_case
    first, again = (screening_report(finding, screening_model, header) for _ in range(2))
    rerun = screening_report(dataclasses.replace(finding, run_id=RUN_ID + "x"), screening_model, header)
    other_date = screening_report(dataclasses.replace(finding, run_date="2026-12-03"), screening_model, header)
    other_series = screening_report(finding, screening_model, read_header(series_files("axial-glioma-t1post")[0]))
    for same in (again, rerun):
        assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (same.SeriesInstanceUID, same.SOPInstanceUID)
    assert texts(hd.sr.ComprehensiveSR.from_dataset(rerun), codes.DCM.AlgorithmParameters)[1] == \
        f"screening run {RUN_ID}x"
    for other in (other_date, other_series):
        assert {other.SeriesInstanceUID, other.SOPInstanceUID}.isdisjoint({first.SeriesInstanceUID,
                                                                           first.SOPInstanceUID})
    assert pydicom.uid.UID(first.SOPInstanceUID).is_valid


def test_identity_comes_from_the_header_alone(glioma_case, screening_model):
    """One finding written with two patients' headers names each header's patient: the finding holds none."""
    finding, header = glioma_case
    other = read_header(series_files("axial-notumor-rle")[0])
    reports = [screening_report(finding, screening_model, source) for source in (header, other)]
    assert [(r.PatientID, r.StudyInstanceUID) for r in reports] == [(h.PatientID, h.StudyInstanceUID)
                                                                     for h in (header, other)]
    assert not {header.PatientID, str(header.PatientName)} & {str(value) for value in
                                                                dataclasses.asdict(finding).values()}


def test_headers_without_identifiers_are_refused_and_without_optional_attributes_are_written(glioma_case,
                                                                                            screening_model):
    finding, header = glioma_case
    bare = copy.deepcopy(header)
    for keyword in ("PatientName", "PatientBirthDate", "AccessionNumber", "StudyDate", "ReferringPhysicianName"):
        delattr(bare, keyword)
    assert round_trip(screening_report(finding, screening_model, bare)).PatientName == ""
    del bare.SOPInstanceUID
    with pytest.raises(ValueError, match="lacks SOPInstanceUID") as refused:
        screening_report(finding, screening_model, bare)
    assert header.PatientID not in str(refused.value)


def test_rows_that_do_not_make_a_finding_are_refused():
    files = series_files("axial-glioma")
    series, prediction = series_rows(files, deciding=1)
    with pytest.raises(ValueError, match="not the series' deciding slice"):
        SeriesFinding.from_rows(series, {**prediction, "source_uri": str(files[0])})
    with pytest.raises(ValueError, match="no verdict"):
        SeriesFinding.from_rows({**series, "flagged": None}, prediction)


def test_heat_map_capture_is_of_the_same_patient_says_the_words_and_declares_no_identifying_text(
        glioma_case, screening_model, caplog):
    finding, header = glioma_case
    picture = np.zeros((160, 160, 3), np.uint8)
    report, capture = (round_trip(dataset) for dataset in report_datasets(finding, screening_model, header, picture))
    assert capture.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage and capture.Modality == "OT"
    assert (capture.PatientID, capture.StudyInstanceUID) == (header.PatientID, header.StudyInstanceUID)
    assert capture.SeriesInstanceUID not in (report.SeriesInstanceUID, header.SeriesInstanceUID)
    assert DISCLAIMER in capture.ImageComments and capture.BurnedInAnnotation == "NO"
    assert list(capture.PatientOrientation) == ["L", "P"]
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
    rows, columns, _ = capture.pixel_array.shape
    assert columns == 480 and rows > 480 and capture.pixel_array[480:].any()  # the caption band holds text
    unoriented = copy.deepcopy(header)
    del unoriented.ImageOrientationPatient
    assert len(report_datasets(finding, screening_model, unoriented, picture)) == 1
    assert "heat-map capture left out" in caplog.text and header.PatientID not in caplog.text
