"""Fields of view of fundus photographs: derived from the image where a dataset ships no mask (STARE, CHASE_DB1, a
user's own photograph), and measured (:func:`fov_diameter`, the scale that scale-aware prediction matches).

A fundus photograph is a bright disc (the retina, seen through the camera's circular aperture) on a dark frame.
:func:`derive_fov` thresholds the **red channel**, which stays bright inside the disc even in dark or
low-contrast photographs (the green and blue channels of the periphery can fall to the frame's level), removes
the frame's noise with a binary opening, keeps the largest connected region and fills its holes (dark lesions,
the vessels of a very dark periphery). On DRIVE, whose masks are distributed, the derived FOV has IoU 0.98 to 1.00
with the official masks (tested on the real copy).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import ConvUNeXtError

__all__ = ["DEFAULT_FOV_THRESHOLD", "derive_fov", "fov_diameter"]

DEFAULT_FOV_THRESHOLD = 20 / 255
"""Red-channel level (of [0, 1]) above which a pixel may be inside the field of view: above the frame's noise
(JPEG frames reach 10-15 of 255), below the darkest rims of the disc."""


def derive_fov(image: np.ndarray, threshold: float = DEFAULT_FOV_THRESHOLD, opening: int = 2) -> np.ndarray:
    """The field of view of a fundus photograph, as a bool ``H x W`` mask.

    Args:
        image: ``H x W x C`` (RGB: the red channel is used; one channel: that one) float in [0, 1], or uint8.
        threshold: red level of [0, 1] above which a pixel may be inside (:data:`DEFAULT_FOV_THRESHOLD`).
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
    inside = red > threshold
    if opening:
        inside = ndimage.binary_opening(inside, iterations=opening)
    labels, count = ndimage.label(inside)
    if count == 0:
        raise ConvUNeXtError(f"no field of view found: no region of the red channel is brighter than {threshold:.3f}")
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))


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
