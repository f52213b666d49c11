"""Fields of view of fundus photographs: derived from the image where a dataset ships no mask (STARE, CHASE_DB1, a
user's own photograph), and measured (:func:`fov_diameter`, the scale that scale-aware prediction matches).

A fundus photograph is a bright disc (the retina, seen through the camera's circular aperture) on a dark frame.
:func:`derive_fov` thresholds the **red channel**, which stays bright inside the disc even in dark or
low-contrast photographs (the green and blue channels of the periphery can fall to the frame's level), removes
the frame's noise with a binary opening (the threshold is raised by the frame's own level, measured in the
image's corners, :func:`frame_level`), keeps the largest connected region and fills its holes (dark lesions,
the vessels of a very dark periphery). On DRIVE, whose masks are distributed, the derived FOV has IoU 0.98 to 1.00
with the official masks (tested on the real copy).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from torch.utils.data import Dataset

from ..errors import ConvUNeXtError

__all__ = ["DEFAULT_FOV_THRESHOLD", "dataset_fov_diameter", "derive_fov", "fov_diameter", "frame_level"]

DEFAULT_FOV_THRESHOLD = 20 / 255
"""Red-channel level (of [0, 1]) above which a pixel may be inside the field of view: above the frame's noise
(JPEG frames reach 10-15 of 255), below the darkest rims of the disc."""


CORNER_FRACTION = 0.06
"""Side of the corner patches that measure the frame's level, as a fraction of the image's side."""
MAX_FRAME_LEVEL = 0.2
"""Corners brighter than this (red, of [0, 1]) are retina, not frame."""


def derive_fov(image: np.ndarray, threshold: float = DEFAULT_FOV_THRESHOLD, opening: int = 2) -> np.ndarray:
    """The field of view of a fundus photograph, as a bool ``H x W`` mask.

    Args:
        image: ``H x W x C`` (RGB: the red channel is used; one channel: that one) float in [0, 1], or uint8.
        threshold: red level of [0, 1] above the frame's (:func:`frame_level`) at which a pixel may be inside
            (:data:`DEFAULT_FOV_THRESHOLD`).
        opening: iterations of the 3x3 binary opening that removes the frame's bright specks.

    Raises:
        ConvUNeXtError: no pixel above the threshold survives the opening (a black or non-fundus image).
    """
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"expected an H x W x C image, got shape {image.shape}")
    red = image[..., 0].astype(np.float32)
    if image.dtype == np.uint8:
        red /= 255.0
    inside = red > threshold + frame_level(red)
    if opening:
        inside = ndimage.binary_opening(inside, iterations=opening)
    labels, count = ndimage.label(inside)
    if count == 0:
        raise ConvUNeXtError(f"no field of view found: no region of the red channel is brighter than {threshold:.3f}")
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))


def frame_level(red: np.ndarray) -> float:
    """The red level of the frame around the disc, which :func:`derive_fov`'s threshold is raised by: the 99th
    percentile of the four corner patches (6% of each side), which lie outside a fundus camera's circular aperture.

    STARE's frames are dark green with a red channel of 0.05 to 0.11, above a fixed threshold of 20/255: without
    this, 3 to 14% of its derived fields of view were frame. Corners brighter than :data:`MAX_FRAME_LEVEL` are not a
    frame (a photograph cropped inside the disc): 0 is returned and the fixed threshold alone applies.
    """
    height, width = red.shape
    rows, cols = max(1, round(height * CORNER_FRACTION)), max(1, round(width * CORNER_FRACTION))
    corners = np.concatenate(
        [red[:rows, :cols].ravel(), red[:rows, -cols:].ravel(), red[-rows:, :cols].ravel(), red[-rows:, -cols:].ravel()]
    )
    level = float(np.percentile(corners, 99))
    return level if level <= MAX_FRAME_LEVEL else 0.0


def fov_diameter(fov: np.ndarray) -> float:
    """The diameter in pixels of a field of view (bool ``H x W``): the longer side of its bounding box.

    A circular aperture cut by the top and bottom of the frame (HRF, many cameras) is as wide as its diameter, so
    the longer side measures it whether or not the frame cuts it.

    Raises:
        ConvUNeXtError: the mask is empty.
    """
    rows, cols = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    if rows.size == 0:
        raise ConvUNeXtError("the field-of-view mask is empty")
    return float(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))


def dataset_fov_diameter(dataset: Dataset) -> float | None:
    """The median field-of-view diameter (pixels) of a dataset's images: the scale a model trained on it knows
    (recorded as ``meta["scale"]["fov_diameter"]``, matched by :mod:`convunext.inference.scale`). None for a dataset
    without fields of view (``info.has_fov`` false) or without images.

    Reads only the FOV masks where the dataset has them (:meth:`~convunext.data.FileDataset.read_arrays`; the FOVs
    derived from the images where it has none), or its samples' ``"fov"`` otherwise.
    """
    info = getattr(dataset, "info", None)
    if info is None or not info.has_fov or len(dataset) == 0:  # type: ignore[arg-type]
        return None
    read_arrays = getattr(dataset, "read_arrays", None)
    diameters = []
    for index in range(len(dataset)):  # type: ignore[arg-type]
        fov = read_arrays(index)[1] if read_arrays is not None else dataset[index]["fov"].numpy()
        if fov is not None:
            diameters.append(fov_diameter(fov))
    return float(np.median(diameters)) if diameters else None
