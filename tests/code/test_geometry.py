"""Slice geometry: positions along the slice normal and the order of a series' slices."""

import math

import pytest

from pipeline.scoring.geometry import slice_order, slice_position

AXIAL = [1, 0, 0, 0, 1, 0]


def test_the_position_is_the_projection_on_the_slice_normal():
    assert slice_position([10.0, -5.0, 42.5], AXIAL) == 42.5
    sagittal = [0, 1, 0, 0, 0, -1]  # rows along y, columns down z: normal along -x
    assert slice_position([7.0, 3.0, 1.0], sagittal) == -7.0
    oblique = [1, 0, 0, 0, math.cos(0.3), math.sin(0.3)]
    assert slice_position([0.0, 0.0, 10.0], oblique) == pytest.approx(10 * math.cos(0.3))


@pytest.mark.parametrize("position, orientation", [
    (None, AXIAL), ([1.0, 2.0], AXIAL), ([1.0, 2.0, 3.0], None), ([1.0, 2.0, 3.0], [1, 0, 0, 1, 0, 0]),
])
def test_missing_or_degenerate_geometry_gives_no_position(position, orientation):
    assert slice_position(position, orientation) is None


def test_order_by_position_then_instance_number_then_name():
    names = ["c", "a", "b"]
    assert slice_order([5.0, -2.5, 0.0], [1, 2, 3], names) == ([1, 2, 0], "slice_position")
    assert slice_order([1.0, 1.0, 0.0], [3, 1, 2], names) == ([1, 2, 0], "instance_number")  # positions repeat
    assert slice_order([None, 1.0, 0.0], [2, 2, None], names) == ([1, 2, 0], "file_name")


def test_a_position_that_is_not_a_number_falls_back_to_instance_numbers():
    assert slice_order([0.0, float("nan"), 2.0], [3, 1, 2], ["a", "b", "c"]) == ([1, 2, 0], "instance_number")
