"""Decoding real DICOM files (pydicom's shipped test files, the sample archive) and bad input, file by file."""

import struct
import zlib

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from model.decode import DecodeError, DecodeLimits, decode_file
from tests.conftest import SAMPLES


def pydicom_file(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not shipped offline")
    with open(path, "rb") as handle:
        return handle.read()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with a tiny (invalid) body."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "image_dfl.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm"])
def test_transfer_syntaxes_decode_to_the_same_image(name):
    reference = decode_file(pydicom_file("MR_small.dcm"), "MR_small.dcm").frames[0]
    decoded = decode_file(pydicom_file(name), name)
    assert decoded.file_format == "dicom" and len(decoded.frames) == 1
    if name.startswith("MR_small"):
        np.testing.assert_allclose(decoded.frames[0], reference)
    assert decoded.frames[0].ndim == 2 and np.isfinite(decoded.frames[0]).all()


def test_multi_frame_dicom_gives_one_frame_each():
    data = (SAMPLES / "archive" / "dicom" / "axial-notumor-multiframe" / "frames.dcm").read_bytes()
    decoded = decode_file(data, "frames.dcm")
    assert len(decoded.frames) == 4 and len({frame.tobytes() for frame in decoded.frames}) == 4


def test_monochrome1_is_inverted_to_display_values():
    folder = SAMPLES / "archive" / "dicom" / "axial-notumor-rle"
    frame = decode_file(next(folder.glob("*.dcm")).read_bytes(), "x.dcm").frames[0]
    border, centre = frame[:5, :5].mean(), frame[80:140, 80:140].mean()
    assert border < centre, "background of a MONOCHROME1 slice must come out dark"


def test_header_keeps_geometry_for_slice_ordering():
    header = decode_file(pydicom_file("MR_small.dcm"), "MR_small.dcm").header
    assert len(header["ImagePositionPatient"]) == 3 and len(header["ImageOrientationPatient"]) == 6


@pytest.mark.parametrize("data,name,code", [
    (b"", "empty.dcm", "empty_file"),
    (b"this is a clinical note, not an image\n" * 5, "note.dcm", "unsupported_format"),
    (b"plain text", "notes.txt", "unsupported_format"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "broken.jpg", "image_decode_failed"),
    (png_header_only(1, 1), "dot.png", "image_too_small"),
    (png_header_only(20000, 20000), "huge.png", "image_too_large"),
])
def test_bad_files_fail_with_a_specific_code(data, name, code):
    with pytest.raises(DecodeError) as caught:
        decode_file(data, name)
    assert caught.value.code == code and str(caught.value)


def test_truncated_pixel_data_is_reported():
    with pytest.raises(DecodeError) as caught:
        decode_file(pydicom_file("MR_truncated.dcm"), "MR_truncated.dcm")
    assert caught.value.code == "dicom_pixel_data_invalid"


def test_truncated_jpeg_is_reported():
    data = next((SAMPLES / "archive" / "loose").glob("*.jpg")).read_bytes()
    with pytest.raises(DecodeError) as caught:
        decode_file(data[: len(data) // 3], "cut.jpg")
    assert caught.value.code == "image_decode_failed"


def test_dicom_without_pixel_data_is_reported():
    with pytest.raises(DecodeError) as caught:
        decode_file(pydicom_file("rtplan.dcm"), "rtplan.dcm")
    assert caught.value.code == "dicom_no_pixel_data"


def test_frame_limit_stops_a_hostile_multi_frame_file_before_decoding():
    data = (SAMPLES / "archive" / "dicom" / "axial-notumor-multiframe" / "frames.dcm").read_bytes()
    with pytest.raises(DecodeError) as caught:
        decode_file(data, "frames.dcm", DecodeLimits(max_frames=2))
    assert caught.value.code == "image_too_large"
