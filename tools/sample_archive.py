"""Builds the sample data committed under ``samples/`` from real images of the shared brain-tumor set.

    python -m tools.sample_archive --shared ../shared/datasets --output samples

``samples/archive/``: what the demo scores. DICOM series made from real slices with synthetic, non-identifying
metadata (invented names and IDs that the outputs must never show): an axial series whose file names run against
the slice order, a sagittal series whose positions descend, a MONOCHROME1 series with RLE compression, and one
multi-frame object whose frames carry their own positions (Per-frame Functional Groups, stored top down);
plus loose JPEG and PNG files. ``samples/labelled/``: a small folder-per-class set (and a few
Br35H tumor slices under ``tumor/``) for training tests that must run without the shared data.
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import shutil

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, RLELossless, generate_uid

from model.labels import CLASS_NAMES

SERIES = (
    # name, class, slices, orientation, step along normal, photometric, compressed, multi-frame
    ("axial-glioma", "glioma", 5, (1, 0, 0, 0, 1, 0), 5.0, "MONOCHROME2", False, False),
    ("sagittal-pituitary", "pituitary", 4, (0, 1, 0, 0, 0, -1), -4.0, "MONOCHROME2", False, False),
    ("axial-meningioma-rle", "meningioma", 4, (1, 0, 0, 0, 1, 0), 6.0, "MONOCHROME1", True, False),
    ("axial-notumor-multiframe", "notumor", 4, (1, 0, 0, 0, 1, 0), 5.0, "MONOCHROME2", False, True),
)
SYNTHETIC_PATIENTS = ("SAMPLE^ALPHA", "SAMPLE^BRAVO", "SAMPLE^CHARLIE", "SAMPLE^DELTA")


def pick(folder: pathlib.Path, count: int, offset: int) -> list[pathlib.Path]:
    files = sorted(folder.iterdir())
    step = max(1, len(files) // (count * 7))
    return files[offset * step:][::step][:count]


def grey_uint16(path: pathlib.Path) -> np.ndarray:
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    return (grey.astype(np.uint16) * 16)  # 12-bit stored values, as MR scanners write


def uid(*parts: str) -> str:
    return generate_uid(entropy_srcs=["mri-screen-sample", *parts])


def base_dataset(series_index: int, name: str, photometric: str) -> Dataset:
    ds = Dataset()
    patient = SYNTHETIC_PATIENTS[series_index]
    ds.PatientName = patient
    ds.PatientID = f"SAMPLE-MRN-{series_index + 1:04d}"
    ds.PatientBirthDate = f"19{60 + series_index}0{series_index + 1}15"
    ds.AccessionNumber = f"SAMPLEACC{series_index + 1:05d}"
    ds.InstitutionName = "Sample General Hospital"
    ds.ReferringPhysicianName = "SAMPLE^REFERRER"
    ds.StudyInstanceUID = uid(name, "study")
    ds.SeriesInstanceUID = uid(name, "series")
    ds.StudyDate = f"2026110{series_index + 1}"
    ds.Modality = "MR"
    ds.SeriesDescription = name
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelSpacing = [0.9, 0.9]
    ds.SliceThickness = 5
    return ds


def with_file_meta(ds: Dataset, sop_uid: str) -> Dataset:
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def slice_dataset(spec: tuple, series_index: int, slice_index: int, pixels: np.ndarray) -> Dataset:
    name, _, _, orientation, step, photometric, compressed, _ = spec
    ds = base_dataset(series_index, name, photometric)
    if photometric == "MONOCHROME1":
        pixels = (pixels.max() - pixels).astype(np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    ds.ImageOrientationPatient = list(orientation)
    normal = np.cross(orientation[:3], orientation[3:])
    ds.ImagePositionPatient = [float(v) for v in -100 + normal * step * slice_index]
    ds.InstanceNumber = slice_index + 1
    ds.PixelData = pixels.tobytes()
    ds = with_file_meta(ds, uid(name, "slice", str(slice_index)))
    if compressed:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    return ds


def multiframe_dataset(spec: tuple, series_index: int, frames: list[np.ndarray]) -> Dataset:
    """One object holding the series' frames, each frame's position in the Per-frame Functional Groups (stored
    from the top of the head down, so the pipeline has to put them in order) and the orientation shared."""
    name, _, _, orientation, step, photometric, _, _ = spec
    ds = base_dataset(series_index, name, photometric)
    stack = np.stack(frames)
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = stack.shape[1:]
    plane = Dataset()
    plane.ImageOrientationPatient = list(orientation)
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([plane])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    normal = np.cross(orientation[:3], orientation[3:])
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [frame_position(-100 + normal * step * (len(frames) - 1 - index)) for index in range(len(frames))])
    ds.InstanceNumber = 1
    ds.PixelData = stack.tobytes()
    return with_file_meta(ds, uid(name, "multiframe"))


def frame_position(position: np.ndarray) -> Dataset:
    plane, item = Dataset(), Dataset()
    plane.ImagePositionPatient = [float(value) for value in position]
    item.PlanePositionSequence = Sequence([plane])
    return item


def scrambled_name(*parts: str) -> str:
    return hashlib.sha1("/".join(parts).encode()).hexdigest()[:12]


def write_series(training: pathlib.Path, archive: pathlib.Path) -> None:
    for series_index, spec in enumerate(SERIES):
        name, label, count, *_, multiframe = spec
        folder = archive / "dicom" / name
        folder.mkdir(parents=True)
        images = [grey_uint16(path) for path in pick(training / label, count, offset=series_index + 1)]
        if multiframe:
            multiframe_dataset(spec, series_index, images).save_as(folder / "frames.dcm", enforce_file_format=True)
            continue
        for slice_index, pixels in enumerate(images):
            dataset = slice_dataset(spec, series_index, slice_index, pixels)
            dataset.save_as(folder / f"{scrambled_name(name, str(slice_index))}.dcm", enforce_file_format=True)


def write_loose_images(training: pathlib.Path, br35h: pathlib.Path, archive: pathlib.Path) -> None:
    loose = archive / "loose"
    loose.mkdir(parents=True)
    for index, label in enumerate(CLASS_NAMES):
        for path in pick(training / label, 2, offset=index + 5):
            shutil.copy(path, loose / f"{label}-{path.stem}.jpg")
    for path in pick(br35h, 2, offset=3):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(loose / f"tumor-{path.stem}.png"), image)


def write_labelled(training: pathlib.Path, br35h: pathlib.Path, labelled: pathlib.Path, per_class: int) -> None:
    for label in CLASS_NAMES:
        (labelled / label).mkdir(parents=True)
        for path in pick(training / label, per_class, offset=0):
            shutil.copy(path, labelled / label / path.name)
    (labelled / "tumor").mkdir(parents=True)
    for path in pick(br35h, per_class // 2, offset=0):
        shutil.copy(path, labelled / "tumor" / path.name)


def build(shared: pathlib.Path, output: pathlib.Path, per_class: int = 16) -> None:
    training, br35h = shared / "brain-tumor-mri" / "Training", shared / "br35h-tumor" / "yes"
    for folder in ("archive", "labelled"):
        shutil.rmtree(output / folder, ignore_errors=True)
    write_series(training, output / "archive")
    write_loose_images(training, br35h, output / "archive")
    write_labelled(training, br35h, output / "labelled", per_class)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default="../shared/datasets", type=pathlib.Path)
    parser.add_argument("--output", default="samples", type=pathlib.Path)
    args = parser.parse_args()
    build(args.shared, args.output)


if __name__ == "__main__":
    main()
