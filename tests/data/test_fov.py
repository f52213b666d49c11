"""Derived fields of view (:mod:`convunext.data.fov`): drawn discs with hand-computed sizes, the error cases, and the
agreement with the masks DRIVE distributes."""

from __future__ import annotations

import numpy as np
import pytest

from convunext.data import open_dataset
from convunext.data.fov import derive_fov, fov_diameter
from convunext.errors import ConvUNeXtError


def disc(height: int, width: int, row: float, col: float, radius: float) -> np.ndarray:
    """The pixels whose centre lies within ``radius`` of ``(row, col)``."""
    rows, cols = np.mgrid[0:height, 0:width]
    return (rows - row) ** 2 + (cols - col) ** 2 <= radius**2


def photograph(inside: np.ndarray, red: int = 200, green: int = 90, blue: int = 40) -> np.ndarray:
    """A uint8 RGB image: ``(red, green, blue)`` on ``inside``, a black frame elsewhere."""
    image = np.zeros((*inside.shape, 3), dtype=np.uint8)
    image[inside] = (red, green, blue)
    return image


def test_the_diameter_of_a_drawn_disc():
    # radius 10 around (15, 20): rows 5..25 and columns 10..30, 21 pixels each way
    assert fov_diameter(disc(30, 40, 15, 20, 10)) == 21.0
    # an ellipse-like blob 5 rows x 9 columns: the longer side
    blob = np.zeros((12, 12), dtype=bool)
    blob[3:8, 1:10] = True
    assert fov_diameter(blob) == 9.0


def test_the_diameter_of_a_disc_cut_by_the_frame_is_its_width():
    # radius 15 around (10, 20) in a 20-row frame: the top and bottom are cut (20 rows), the width is whole (31)
    cut = disc(20, 40, 10, 20, 15)
    assert cut[0].any() and cut[-1].any()
    assert fov_diameter(cut) == 31.0


def test_an_empty_mask_has_no_diameter():
    with pytest.raises(ConvUNeXtError, match="^the field-of-view mask is empty$"):
        fov_diameter(np.zeros((5, 6), dtype=bool))


def test_a_drawn_disc_is_found_exactly_whatever_its_frame_specks_and_dark_lesions():
    inside = disc(30, 34, 15, 17, 12)
    image = photograph(inside)
    image[2, 2] = image[27, 30] = (255, 255, 255)  # bright specks in the frame: removed by the opening
    image[14:17, 10:13] = 0  # a dark lesion inside the disc: its hole is filled
    fov = derive_fov(image)
    assert fov.dtype == bool and np.array_equal(fov, inside)
    assert fov_diameter(fov) == 25.0  # 2 x 12 + 1
    assert np.array_equal(derive_fov(image.astype(np.float32) / 255), fov)  # float in [0, 1] reads the same


def test_the_largest_bright_region_is_the_field_of_view():
    inside = disc(30, 40, 15, 12, 10)
    label = np.zeros_like(inside)
    label[2:8, 30:38] = True  # a 6 x 8 bright label in the frame's corner: a smaller region
    assert np.array_equal(derive_fov(photograph(inside | label)), inside)


def test_the_red_channel_decides():
    inside = disc(20, 24, 10, 12, 9)
    assert np.array_equal(derive_fov(photograph(inside, red=200, green=0, blue=0)), inside)
    with pytest.raises(ConvUNeXtError, match="no region of the red channel is brighter than 0.078"):
        derive_fov(photograph(inside, red=15, green=200, blue=200))  # red under 20/255


def test_a_black_image_has_no_field_of_view():
    with pytest.raises(ConvUNeXtError, match="^no field of view found"):
        derive_fov(np.zeros((10, 12, 3), dtype=np.uint8))


def test_derived_fields_of_view_agree_with_drive_masks(drive_root):
    # the module's promise: IoU 0.98 to 1.00 with the masks DRIVE distributes, on all 40 images
    ious = []
    for split in ("trainval", "test"):
        dataset = open_dataset("drive", drive_root, split)
        for index in range(len(dataset)):
            image, official = dataset.read_arrays(index)
            derived = derive_fov(image)
            ious.append((derived & official).sum() / (derived | official).sum())
    assert len(ious) == 40 and min(ious) >= 0.98 and float(np.mean(ious)) >= 0.995
