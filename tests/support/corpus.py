"""The bad-input corpus: every file pydicom ships offline plus generated hostile and unusual cases, each with the
outcome an independent reading (pydicom alone, or how the case was made) says it must have."""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pathlib
import shutil
import struct
import warnings
import zlib

import cv2
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML

from tests.conftest import SAMPLES

MIN_SIDE = 16
MAX_FILE_MB = 2  # the corpus run's --max-file-mb, so one case can exceed it cheaply


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))


BAD_FILES = {
    # name: (expected error code, how to make the bytes)
    "bad/empty.dcm": ("empty_file", lambda: b""),
    "bad/report.dcm": ("unsupported_format", lambda: b"Findings: unremarkable.\n" * 20),
    "bad/notes.txt": ("unsupported_format", lambda: b"not an image"),
    # MR objects the default selection rules send to the decoder (see mr_dataset)
    "bad/truncated.dcm": ("dicom_pixel_data_invalid", lambda: dicom_bytes(mr_dataset())[:6000]),
    "bad/no-pixels.dcm": ("dicom_no_pixel_data", lambda: without_pixel_data(mr_dataset())),
    "bad/corrupt.jpg": ("image_decode_failed", lambda: b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x13" * 64),
    "bad/one-pixel.png": ("image_too_small", lambda: cv2.imencode(".png", np.zeros((1, 1), np.uint8))[1].tobytes()),
    "bad/huge.png": ("image_too_large", lambda: png_claiming(20000, 20000)),
}


@dataclasses.dataclass(frozen=True)
class Expected:
    status: str  # "ok" or "error"
    frames: int = 1  # rows the file must yield
    code: str | None = None  # None for ok rows, or for pydicom files where only "some specific error" is known


def pydicom_outcome(path: pathlib.Path) -> Expected:
    """What pydicom alone says of a file: an image of N frames of at least MIN_SIDE pixels, or an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dataset = pydicom.dcmread(path, force=True)
            if "PixelData" not in dataset:
                return Expected("error")
            pixels = dataset.pixel_array
            rows, columns = int(dataset.Rows), int(dataset.Columns)
            frames = int(dataset.get("NumberOfFrames", 1) or 1)
        except Exception:
            return Expected("error")
    if min(rows, columns) < MIN_SIDE or pixels.size == 0:
        return Expected("error", code="image_too_small")
    return Expected("ok", frames)


def mr_dataset() -> pydicom.Dataset:
    """pydicom's MR_small, declared an original acquisition (it ships marked DERIVED\\SECONDARY, which the default
    selection rules skip before decoding), so the cases built on it reach the decoder."""
    dataset = pydicom.dcmread(get_testdata_file("MR_small.dcm", download=False))
    dataset.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    return dataset


def dicom_bytes(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def without_pixel_data(dataset: pydicom.Dataset) -> bytes:
    del dataset.PixelData
    return dicom_bytes(dataset)


def edit_dataset(dataset: pydicom.Dataset, changes: dict) -> pydicom.Dataset:
    """``dataset`` with each keyword set to its value, or removed where the value is None."""
    for keyword, value in changes.items():
        if value is None:
            delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    return dataset


def edited_mr(**changes) -> bytes:
    return dicom_bytes(edit_dataset(mr_dataset(), changes))


def malformed_instance_number() -> bytes:
    """IS value "1A": not a number, patched into the bytes because pydicom refuses to write it."""
    element = b"\x20\x00\x13\x00IS\x02\x00"  # (0020,0013) Instance Number, explicit VR little endian
    data = edited_mr(InstanceNumber="11")
    assert data.count(element + b"11") == 1
    return data.replace(element + b"11", element + b"1A")


def unsupported_syntax(dataset: pydicom.Dataset | None = None) -> bytes:
    """MR_small (or ``dataset``) with its pixel data declared MPEG2: no installed decoder reads it."""
    dataset = mr_dataset() if dataset is None else dataset
    dataset.file_meta.TransferSyntaxUID = MPEG2MPML
    dataset.PixelData = encapsulate([b"\x00" * 256])
    return dicom_bytes(dataset)


def rgb_dicom(frames: int) -> bytes:
    dataset = mr_dataset()
    image = cv2.cvtColor(cv2.imread(str(next((SAMPLES / "archive" / "loose").glob("*.jpg")))), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (96, 96))
    stack = np.stack([np.roll(image, shift, axis=1) for shift in range(frames)])
    dataset.update({"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "PlanarConfiguration": 0,
                    "BitsAllocated": 8, "BitsStored": 8, "HighBit": 7, "PixelRepresentation": 0,
                    "Rows": 96, "Columns": 96})
    dataset.update({"NumberOfFrames": frames} if frames > 1 else {})
    dataset.PixelData = (stack if frames > 1 else stack[0]).tobytes()
    for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if keyword in dataset:
            delattr(dataset, keyword)
    return dicom_bytes(dataset)


def sample_jpeg() -> bytes:
    return next((SAMPLES / "archive" / "loose").glob("*.jpg")).read_bytes()


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def generated_cases() -> dict[str, tuple[Expected, callable]]:
    """Relative path -> (expected outcome, how to make the bytes)."""
    cases = {name: (Expected("error", code=code), make) for name, (code, make) in BAD_FILES.items()}
    grey = cv2.imdecode(np.frombuffer(sample_jpeg(), np.uint8), cv2.IMREAD_GRAYSCALE)
    cases.update({
        "bad/empty.jpg": (Expected("error", code="empty_file"), lambda: b""),
        "bad/truncated.jpg": (Expected("error", code="image_decode_failed"), lambda: sample_jpeg()[:2000]),
        "bad/header-cut.dcm": (Expected("error", code="dicom_invalid"), lambda: edited_mr()[:200]),
        "bad/gzipped.dcm": (Expected("error", code="unsupported_format"), lambda: gzip.compress(edited_mr())),
        "bad/mpeg2.dcm": (Expected("error", code="dicom_unsupported_transfer_syntax"), unsupported_syntax),
        "bad/huge.dcm": (Expected("error", code="image_too_large"), lambda: edited_mr(Rows=20000, Columns=20000)),
        "bad/one-pixel.dcm": (Expected("error", code="image_too_small"), lambda: edited_mr(Rows=1, Columns=1)),
        "bad/many-frames.dcm": (Expected("error", code="image_too_large"), lambda: edited_mr(NumberOfFrames=5000)),
        "bad/no-rows.dcm": (Expected("error", code="dicom_pixel_data_invalid"), lambda: edited_mr(Rows=None)),
        "bad/nan-rescale.dcm": (Expected("error", code="invalid_pixel_values"),
                                lambda: edited_mr(RescaleSlope="NaN", RescaleIntercept="0")),
        "bad/inf-rescale.dcm": (Expected("error", code="invalid_pixel_values"),
                                lambda: edited_mr(RescaleSlope="1e308", RescaleIntercept="0")),
        "bad/four-samples.dcm": (Expected("error", code="dicom_pixel_data_invalid"),
                                 lambda: edited_mr(SamplesPerPixel=4)),
        "bad/over-byte-limit.dcm": (Expected("error", code="file_too_large"),
                                    lambda: edited_mr() + b"\x00" * (MAX_FILE_MB * 2**20)),
        "bad/Thumbs.db": (Expected("error", code="unsupported_format"), lambda: os.urandom(4096)),
        "bad/.DS_Store": (Expected("error", code="unsupported_format"), lambda: b"\x00\x00\x00\x01Bud1" * 64),
        "odd/bad-header-values.dcm": (Expected("ok"), malformed_instance_number),
        "odd/IM000001": (Expected("ok"), edited_mr),
        "odd/rgb.dcm": (Expected("ok"), lambda: rgb_dicom(1)),
        "odd/rgb-4d.dcm": (Expected("ok", frames=3), lambda: rgb_dicom(3)),
        "odd/png-named.jpg": (Expected("ok"), lambda: png(grey)),
        "odd/sixteen-bit.png": (Expected("ok"), lambda: png(grey.astype(np.uint16) * 257)),
        "odd/rgba.png": (Expected("ok"), lambda: png(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGRA))),
        "odd/name with spaces ü 01 (copy).jpg": (Expected("ok"), sample_jpeg),
        "odd/ünïcødé/扫描 1.dcm": (Expected("ok"), edited_mr),
    })
    return cases


def build_corpus(root: pathlib.Path) -> dict[str, Expected]:
    """Write the corpus under ``root``; returns the expected outcome of every file the job must list."""
    expected = {}
    shipped = pathlib.Path(pydicom.data.__file__).parent / "test_files"
    for path in sorted(shipped.rglob("*")):
        if path.is_file() and path.name != "DICOMDIR":
            target = root / "pydicom" / path.relative_to(shipped)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
            expected[str(target)] = pydicom_outcome(path)
    for name, (outcome, make) in generated_cases().items():
        target = root / "generated" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(make())
        expected[str(target)] = outcome
    (root / "generated" / "DICOMDIR").write_bytes(edited_mr())  # skipped by the listing, by name
    os.symlink(root, root / "generated" / "odd" / "loop")  # a link back up: must not trap the walk
    return expected


def padded_sample_archive(root: pathlib.Path, copies: int) -> pathlib.Path:
    """The sample archive under ``root`` with its loose images copied ``copies`` times over: a run long enough to
    be cut into while it scores."""
    shutil.copytree(SAMPLES / "archive", root)
    for copy in range(copies):
        shutil.copytree(SAMPLES / "archive" / "loose", root / "copies" / f"{copy:02d}")
    return root
