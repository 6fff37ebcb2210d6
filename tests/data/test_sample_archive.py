"""The demo's DICOM series: real consecutive slices of one patient in one sequence, with the geometry of
consecutive axial slices, rebuilt byte for byte from the committed slices without the shared data."""

import pathlib
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from tests.conftest import SAMPLES
from tools import sample_archive

DICOM = SAMPLES / "archive" / "dicom"


def frames_of(folder: pathlib.Path) -> list[tuple[list[float], int, pydicom.Dataset]]:
    """(ImagePositionPatient, instance or frame number, dataset) of every slice of a series folder."""
    frames = []
    for path in sorted(folder.glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        groups = dataset.get("PerFrameFunctionalGroupsSequence")
        if groups:
            frames += [(list(item.PlanePositionSequence[0].ImagePositionPatient), number + 1, dataset)
                       for number, item in enumerate(groups)]
        else:
            frames.append((list(dataset.ImagePositionPatient), int(dataset.InstanceNumber), dataset))
    return frames


def test_the_series_are_rebuilt_byte_for_byte_from_the_committed_slices(tmp_path):
    shutil.copytree(SAMPLES / "sources", tmp_path / "samples" / "sources")
    sample_archive.build(tmp_path / "absent", tmp_path / "samples")  # no shared data: the committed slices serve
    rebuilt = tmp_path / "samples" / "archive" / "dicom"
    committed = sorted(path.relative_to(DICOM) for path in DICOM.rglob("*.dcm"))
    assert sorted(path.relative_to(rebuilt) for path in rebuilt.rglob("*.dcm")) == committed
    assert all((rebuilt / path).read_bytes() == (DICOM / path).read_bytes() for path in committed)


@pytest.mark.parametrize("spec", sample_archive.SERIES, ids=lambda spec: spec.name)
def test_each_series_is_consecutive_axial_slices_of_one_patient_and_sequence(spec):
    frames = frames_of(DICOM / spec.name)
    datasets = [dataset for _, _, dataset in frames]
    assert len(frames) == spec.count == len(spec.source_names())
    assert all((spec.source_folder(SAMPLES / "sources") / name).is_file() for name in spec.source_names())
    for keyword in ("SeriesInstanceUID", "StudyInstanceUID", "PatientID", "FrameOfReferenceUID"):
        assert len({dataset.data_element(keyword).value for dataset in datasets}) == 1, keyword
    orientation = [list(dataset.get("ImageOrientationPatient") or dataset.SharedFunctionalGroupsSequence[0]
                        .PlaneOrientationSequence[0].ImageOrientationPatient) for dataset in datasets]
    assert all(np.allclose(value, sample_archive.AXIAL) for value in orientation)
    ordered = sorted(frames, key=lambda frame: frame[0][2])  # feet to head
    heights = np.array([position[2] for position, _, _ in ordered])
    assert np.allclose(np.diff(heights), datasets[0].SliceThickness) and datasets[0].SliceThickness > 0
    assert len({tuple(position[:2]) for position, _, _ in frames}) == 1  # one column of slices, none shifted
    numbers = [number for _, number, _ in ordered]
    assert numbers == (sorted(numbers, reverse=True) if spec.top_down else sorted(numbers))
    if not spec.multiframe:
        assert [float(dataset.SliceLocation) for _, _, dataset in ordered] == list(heights)


def test_the_archive_holds_one_series_per_transfer_syntax_and_layout():
    """The demo shows each encoding the sample series cover: uncompressed and RLE, single and multi-frame."""
    syntaxes = {}
    for folder in sorted(DICOM.iterdir()):
        for path in folder.glob("*.dcm"):
            dataset = pydicom.dcmread(path)
            assert dataset.Modality == "MR" and dataset.Rows == dataset.Columns == 256
            syntaxes.setdefault(folder.name, set()).add(dataset.file_meta.TransferSyntaxUID)
    assert syntaxes["axial-notumor-rle"] == {RLELossless}
    assert {syntax for name, found in syntaxes.items() if name != "axial-notumor-rle" for syntax in found} == {
        ExplicitVRLittleEndian}
    assert sorted(syntaxes) == sorted(spec.name for spec in sample_archive.SERIES)
