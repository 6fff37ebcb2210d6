"""Builds the sample data committed under ``samples/`` from real images of the shared data sets.

    python -m tools.sample_archive --shared ../shared/datasets --output samples

``samples/archive/dicom/``: what the demo scores as DICOM. Each series is consecutive axial slices of one patient in
one sequence of the LGG glioma set, with synthetic, non-identifying metadata (invented names and IDs that the
outputs must never show) and the geometry of consecutive slices: one SeriesInstanceUID, a shared orientation, and
positions and slice locations one slice thickness apart, rising from the feet to the head. A FLAIR glioma series
whose file names run against the slice order, a T1 post-contrast glioma series stored from the top of the head down,
a MONOCHROME1 tumor-free series with RLE compression, and one multi-frame tumor-free object whose frames carry their
own positions (Per-frame Functional Groups, stored top down). The few slices they are made of are committed under
``samples/sources/`` and copied there from the shared set when it is present, so the series are rebuilt byte for
byte without it.

``samples/archive/loose/``: loose JPEG and PNG files of the four-class and Br35H sets. ``samples/labelled/``: a small
folder-per-class set (and a few Br35H tumor slices under ``tumor/``) for training tests that must run without the
shared data. Both are rebuilt only when the shared sets are present, and kept as committed otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import pathlib
import shutil
from typing import NamedTuple

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, RLELossless, generate_uid

from model.labels import CLASS_NAMES

LOG = logging.getLogger("tools.sample_archive")
LGG = "lgg-glioma"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SLICE_THICKNESS = 5.0  # mm between consecutive slices, along the slice normal (feet to head)
PIXEL_SPACING = 0.9  # mm; 256 pixels cover 230 mm, a head's field of view


class SampleSeries(NamedTuple):
    """One demo series: consecutive slices from ``first_slice`` of one LGG patient in one sequence, and its storage."""

    name: str
    label: str  # the LGG folder the slices come from: glioma or notumor
    sequence: str  # flair, t1pre or t1post
    patient: str
    first_slice: int
    count: int
    top_down: bool = False  # instance 1 is the top slice, so positions descend with the instance number
    photometric: str = "MONOCHROME2"
    compressed: bool = False  # RLE Lossless
    multiframe: bool = False

    def source_names(self) -> list[str]:
        return [f"{self.patient}_{index}.jpg" for index in range(self.first_slice, self.first_slice + self.count)]

    def source_folder(self, sources: pathlib.Path) -> pathlib.Path:
        return sources / LGG / self.label / self.sequence


SERIES = (  # the model flags both glioma series and neither tumor-free one
    SampleSeries("axial-glioma", "glioma", "flair", "TCGA_HT_7855_19951020", 10, 5),
    SampleSeries("axial-glioma-t1post", "glioma", "t1post", "TCGA_HT_7694_19950404", 12, 4, top_down=True),
    SampleSeries("axial-notumor-rle", "notumor", "t1pre", "TCGA_DU_5853_19950823", 16, 4, photometric="MONOCHROME1",
                 compressed=True),
    SampleSeries("axial-notumor-multiframe", "notumor", "flair", "TCGA_DU_5852_19950709", 22, 4, top_down=True,
                 multiframe=True),
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


def base_dataset(series_index: int, spec: SampleSeries) -> Dataset:
    ds = Dataset()
    patient = SYNTHETIC_PATIENTS[series_index]
    ds.PatientName = patient
    ds.PatientID = f"SAMPLE-MRN-{series_index + 1:04d}"
    ds.PatientBirthDate = f"19{60 + series_index}0{series_index + 1}15"
    ds.AccessionNumber = f"SAMPLEACC{series_index + 1:05d}"
    ds.InstitutionName = "Sample General Hospital"
    ds.ReferringPhysicianName = "SAMPLE^REFERRER"
    ds.StudyInstanceUID = uid(spec.name, "study")
    ds.SeriesInstanceUID = uid(spec.name, "series")
    ds.FrameOfReferenceUID = uid(spec.name, "frame-of-reference")
    ds.StudyDate = f"2026110{series_index + 1}"
    ds.Modality = "MR"
    ds.SeriesDescription = f"{spec.name} {spec.sequence}"
    ds.SeriesNumber = series_index + 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = spec.photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelSpacing = [PIXEL_SPACING, PIXEL_SPACING]
    ds.SliceThickness = SLICE_THICKNESS
    ds.SpacingBetweenSlices = SLICE_THICKNESS
    return ds


def slice_position(spec: SampleSeries, slice_index: int) -> list[float]:
    """ImagePositionPatient of the series' ``slice_index``-th slice from the feet: the image's top left corner,
    ``SLICE_THICKNESS`` higher (+z, towards the head) per source slice, as the LGG slice numbers run."""
    corner = -PIXEL_SPACING * 256 / 2
    return [corner, corner, SLICE_THICKNESS * (spec.first_slice + slice_index)]


def stored_order(spec: SampleSeries) -> list[int]:
    """Slice indices (from the feet) in the order of their instance numbers (or frames)."""
    indices = list(range(spec.count))
    return indices[::-1] if spec.top_down else indices


def with_file_meta(ds: Dataset, sop_uid: str) -> Dataset:
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def stored_pixels(spec: SampleSeries, pixels: np.ndarray) -> np.ndarray:
    return (pixels.max() - pixels).astype(np.uint16) if spec.photometric == "MONOCHROME1" else pixels


def slice_dataset(spec: SampleSeries, series_index: int, slice_index: int, pixels: np.ndarray) -> Dataset:
    ds = base_dataset(series_index, spec)
    pixels = stored_pixels(spec, pixels)
    ds.Rows, ds.Columns = pixels.shape
    ds.ImageOrientationPatient = list(AXIAL)
    ds.ImagePositionPatient = slice_position(spec, slice_index)
    ds.SliceLocation = ds.ImagePositionPatient[2]
    ds.InstanceNumber = stored_order(spec).index(slice_index) + 1
    ds.PixelData = pixels.tobytes()
    ds = with_file_meta(ds, uid(spec.name, "slice", str(slice_index)))
    if spec.compressed:
        ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)  # reproducible
    return ds


def multiframe_dataset(spec: SampleSeries, series_index: int, slices: list[np.ndarray]) -> Dataset:
    """One object holding the series' slices as frames in their stored order (from the top of the head down when
    ``top_down``, so the pipeline has to put them in order), each frame's position in the Per-frame Functional
    Groups and the orientation shared."""
    ds = base_dataset(series_index, spec)
    order = stored_order(spec)
    stack = np.stack([stored_pixels(spec, slices[index]) for index in order])
    ds.NumberOfFrames = len(order)
    ds.Rows, ds.Columns = stack.shape[1:]
    plane = Dataset()
    plane.ImageOrientationPatient = list(AXIAL)
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([plane])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence([frame_position(slice_position(spec, index)) for index in order])
    ds.InstanceNumber = 1
    ds.PixelData = stack.tobytes()
    return with_file_meta(ds, uid(spec.name, "multiframe"))


def frame_position(position: list[float]) -> Dataset:
    plane, item = Dataset(), Dataset()
    plane.ImagePositionPatient = position
    item.PlanePositionSequence = Sequence([plane])
    return item


def scrambled_name(*parts: str) -> str:
    return hashlib.sha1("/".join(parts).encode()).hexdigest()[:12]


def copy_sources(shared: pathlib.Path, sources: pathlib.Path) -> None:
    """Copies the slices the series are made of from the shared LGG set into ``sources`` (only those)."""
    shutil.rmtree(sources / LGG, ignore_errors=True)
    for spec in SERIES:
        folder = spec.source_folder(sources)
        folder.mkdir(parents=True, exist_ok=True)
        for name in spec.source_names():
            shutil.copy(spec.source_folder(shared) / name, folder / name)


def write_series(sources: pathlib.Path, archive: pathlib.Path) -> None:
    """The DICOM series under ``archive/dicom``, made from the slices under ``sources``."""
    shutil.rmtree(archive / "dicom", ignore_errors=True)
    for series_index, spec in enumerate(SERIES):
        folder = archive / "dicom" / spec.name
        folder.mkdir(parents=True)
        slices = [grey_uint16(spec.source_folder(sources) / name) for name in spec.source_names()]
        if spec.multiframe:
            multiframe_dataset(spec, series_index, slices).save_as(folder / "frames.dcm", enforce_file_format=True)
            continue
        for slice_index, pixels in enumerate(slices):
            dataset = slice_dataset(spec, series_index, slice_index, pixels)
            dataset.save_as(folder / f"{scrambled_name(spec.name, str(slice_index))}.dcm", enforce_file_format=True)


def write_loose_images(training: pathlib.Path, br35h: pathlib.Path, archive: pathlib.Path) -> None:
    loose = archive / "loose"
    shutil.rmtree(loose, ignore_errors=True)
    loose.mkdir(parents=True)
    for index, label in enumerate(CLASS_NAMES):
        for path in pick(training / label, 2, offset=index + 5):
            shutil.copy(path, loose / f"{label}-{path.stem}.jpg")
    for path in pick(br35h, 2, offset=3):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(loose / f"tumor-{path.stem}.png"), image)


def write_labelled(training: pathlib.Path, br35h: pathlib.Path, labelled: pathlib.Path, per_class: int) -> None:
    shutil.rmtree(labelled, ignore_errors=True)
    for label in CLASS_NAMES:
        (labelled / label).mkdir(parents=True)
        for path in pick(training / label, per_class, offset=0):
            shutil.copy(path, labelled / label / path.name)
    (labelled / "tumor").mkdir(parents=True)
    for path in pick(br35h, per_class // 2, offset=0):
        shutil.copy(path, labelled / "tumor" / path.name)


def build(shared: pathlib.Path, output: pathlib.Path, per_class: int = 16) -> None:
    """Rebuilds ``output``'s samples: from the shared sets where present, from the committed sources otherwise."""
    sources = output / "sources"
    if (shared / LGG).is_dir():
        copy_sources(shared, sources)
    else:
        LOG.info("%s is absent: the DICOM series are rebuilt from the slices under %s", shared / LGG, sources)
    write_series(sources, output / "archive")
    training, br35h = shared / "brain-tumor-mri" / "Training", shared / "br35h-tumor" / "yes"
    if not (training.is_dir() and br35h.is_dir()):
        LOG.info("%s or %s is absent: the loose and labelled images are kept as they are", training, br35h)
        return
    write_loose_images(training, br35h, output / "archive")
    write_labelled(training, br35h, output / "labelled", per_class)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default="../shared/datasets", type=pathlib.Path)
    parser.add_argument("--output", default="samples", type=pathlib.Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build(args.shared, args.output)


if __name__ == "__main__":
    main()
