"""Fixtures for the scoring pipeline: the model under test and an archive with good and bad files."""

import os
import pathlib
import shutil
import struct
import zlib

import cv2
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from model.registry import DEFAULT_MODEL
from tests.conftest import SAMPLES


@pytest.fixture(scope="session")
def model_uri() -> str:
    """The shipped model, unless MRI_SCREEN_TEST_MODEL names another model or registry folder."""
    return os.environ.get("MRI_SCREEN_TEST_MODEL", DEFAULT_MODEL)


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
    "bad/truncated.dcm": ("dicom_pixel_data_invalid",
                          lambda: pathlib.Path(get_testdata_file("MR_small.dcm", download=False)).read_bytes()[:6000]),
    "bad/no-pixels.dcm": ("dicom_no_pixel_data",
                          lambda: pathlib.Path(get_testdata_file("rtplan.dcm", download=False)).read_bytes()),
    "bad/corrupt.jpg": ("image_decode_failed", lambda: b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x13" * 64),
    "bad/one-pixel.png": ("image_too_small", lambda: cv2.imencode(".png", np.zeros((1, 1), np.uint8))[1].tobytes()),
    "bad/huge.png": ("image_too_large", lambda: png_claiming(20000, 20000)),
}


@pytest.fixture(scope="session")
def mixed_archive(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """The sample archive plus one file of each bad kind, a DICOMDIR, a unicode name and a symlink loop."""
    root = tmp_path_factory.mktemp("archive") / "archive"
    shutil.copytree(SAMPLES / "archive", root)
    for name, (_, make) in BAD_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(make())
    (root / "dicom" / "DICOMDIR").write_bytes(b"\x00" * 200)
    source = next((root / "loose").glob("glioma-*.jpg"))
    shutil.copy(source, root / "loose" / "scan ü 01 (copy).jpg")
    os.symlink(root, root / "bad" / "loop")
    return root, {name: code for name, (code, _) in BAD_FILES.items()}
