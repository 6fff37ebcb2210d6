"""Write the check slices bundled with the code (``model/check_images.npz``) from the sample archive.

    python -m tools.check_images [--archive samples/archive] [--count 16]

Every int8 predictor is compared with float32 on these slices on the CPU it starts on (``model.agreement``). They are
real MRI slices of the sample archive (JPEG, PNG and DICOM of each class), decoded, brought to 0..255 by the
preprocessing's own intensity normalisation and shrunk to at most 256 pixels a side; the model's preprocessing then
runs on them as on any slice. No patient identity: pixels only, from the public sets the archive was made from.
"""

from __future__ import annotations

import argparse
import pathlib
import warnings

import cv2
import numpy as np

from model.agreement import CHECK_IMAGES
from model.decode import decode_file
from model.preprocessing import PreprocessConfig, normalize_intensity, to_grey

SIDE = 256


def check_frames(archive: pathlib.Path, count: int) -> list[np.ndarray]:
    """``count`` frames spread over the archive's files, in path order."""
    frames = []
    for path in sorted(p for p in archive.rglob("*") if p.is_file()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames += decode_file(path.read_bytes(), str(path)).frames[:1]
    chosen = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    return [shrunk(normalize_intensity(to_grey(frames[index]), PreprocessConfig())) for index in chosen]


def shrunk(frame: np.ndarray) -> np.ndarray:
    scale = SIDE / max(frame.shape)
    if scale >= 1:
        return frame
    size = (round(frame.shape[1] * scale), round(frame.shape[0] * scale))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", default="samples/archive", help="folder of sample MRI")
    parser.add_argument("--count", type=int, default=16, help="how many slices")
    args = parser.parse_args()
    frames = check_frames(pathlib.Path(args.archive), args.count)
    np.savez_compressed(CHECK_IMAGES, **{f"slice{index:02d}": frame for index, frame in enumerate(frames)})
    print(f"{len(frames)} slices -> {CHECK_IMAGES} ({CHECK_IMAGES.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
