"""Slice geometry: where a DICOM slice lies along its series' slice normal, and the order of a series' slices.

The position of a slice is its ImagePositionPatient projected on the normal of ImageOrientationPatient (the cross
product of the row and column direction cosines). When positions are missing or repeat, the order falls back to
InstanceNumber, then to the file name.
"""

from __future__ import annotations

import numpy as np


def slice_normal(orientation: list[float] | None) -> np.ndarray | None:
    if orientation is None or len(orientation) != 6:
        return None
    normal = np.cross(np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:], dtype=float))
    norm = float(np.linalg.norm(normal))
    return normal / norm if norm > 1e-6 else None


def slice_position(position: list[float] | None, orientation: list[float] | None) -> float | None:
    """Signed distance of the slice along its normal, or None without usable geometry."""
    normal = slice_normal(orientation)
    if normal is None or position is None or len(position) != 3:
        return None
    return float(np.dot(np.asarray(position, dtype=float), normal))


def slice_order(positions: list[float | None], instance_numbers: list[int | None],
                names: list[str]) -> tuple[list[int], str]:
    """Indices of the slices in order along the normal, and which key ordered them."""
    if all(p is not None and np.isfinite(p) for p in positions) and len(set(np.round(positions, 4))) == len(positions):
        return sorted(range(len(positions)), key=lambda i: positions[i]), "slice_position"
    if all(n is not None for n in instance_numbers) and len(set(instance_numbers)) == len(instance_numbers):
        return sorted(range(len(instance_numbers)), key=lambda i: instance_numbers[i]), "instance_number"
    return sorted(range(len(names)), key=lambda i: names[i]), "file_name"
