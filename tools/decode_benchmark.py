"""Decode + preprocess cost per input format, on one core (results go to docs/benchmarks.md).

    python -m tools.decode_benchmark --source ../shared/datasets/brain-tumor-mri/Training --images 200

Real slices from ``--source`` are written as JPEG, PNG and 512x512 16-bit DICOM (uncompressed, RLE, JPEG 2000
lossless, JPEG-LS lossless: whichever pydicom can encode here), held in memory, and each is decoded and
preprocessed with the pipeline's own functions (``model.decode.decode_file``, ``model.preprocessing``), one
process, one thread. Prints one JSON line per format: milliseconds per image and images per second.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import pathlib
import time

import cv2
import numpy as np
import pydicom
import pydicom.uid
from pydicom.dataset import FileMetaDataset

from model.decode import decode_file
from model.preprocessing import PreprocessConfig, preprocess_image

SIZE = 512
COMPRESSED = {"dicom-rle": pydicom.uid.RLELossless, "dicom-jpeg2000": pydicom.uid.JPEG2000Lossless,
              "dicom-jpegls": pydicom.uid.JPEGLSLossless}


def slices(source: pathlib.Path, count: int) -> list[np.ndarray]:
    paths = itertools.islice(itertools.cycle(sorted(source.rglob("*.jpg"))), count)
    return [cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (SIZE, SIZE)) for path in paths]


def dicom_bytes(image: np.ndarray, syntax=None, **attributes) -> bytes:
    """A 16-bit MR slice (12 bits stored, as scanners write) in ``syntax`` (explicit VR little endian if None), with
    any further ``attributes`` (DICOM keywords) set."""
    pixels = (image.astype(np.uint16) * 16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.MRImageStorage
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.Rows, dataset.Columns = "MR", SIZE, SIZE
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    dataset.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    if syntax is not None:
        dataset.compress(syntax, pixels)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def encoded(name: str, image: np.ndarray) -> bytes:
    if name == "jpeg":
        return cv2.imencode(".jpg", image)[1].tobytes()
    if name == "png":
        return cv2.imencode(".png", image)[1].tobytes()
    return dicom_bytes(image, COMPRESSED.get(name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=pathlib.Path, default=pathlib.Path("../shared/datasets/brain-tumor-mri"))
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    images, config = slices(args.source, args.images), PreprocessConfig()
    for name in ("jpeg", "png", "dicom-16bit", *COMPRESSED):
        try:
            files = [encoded(name, image) for image in images]
        except Exception as error:  # an encoder this machine lacks: say so and go on
            print(json.dumps({"format": name, "skipped": f"cannot encode here: {type(error).__name__}: {error}"}))
            continue
        started = time.perf_counter()
        for index, data in enumerate(files):
            preprocess_image(decode_file(data, f"{index}.{name}").frames[0], config)
        seconds = time.perf_counter() - started
        print(json.dumps({"format": name, "images": len(files), "kib_per_file": round(np.mean([len(f) for f in files])
                                                                                       / 1024, 1),
                          "ms_per_image": round(1000 * seconds / len(files), 2),
                          "images_per_second": round(len(files) / seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
