"""One case of a volume dataset read and checked: its channels and label agree in shape and affine, its labels are
class ids of the dataset (:func:`read_case`); or its label alone, the images checked from their headers
(:func:`read_case_label`), which is all a dataset needs to list its slices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConvUNeXtError
from .layout import VolumeCase
from .nifti import is_nifti_path, nifti_geometry
from .volume import Volume, read_volume, same_affine

__all__ = ["check_label_values", "check_matches", "read_case", "read_case_label", "read_label_on"]


def check_label_values(label: Volume, num_classes: int) -> np.ndarray:
    """The label array as uint8 if its values are all in ``0 .. num_classes - 1``.

    Raises:
        ConvUNeXtError: another value, naming the file and the classes.
    """
    values = np.unique(label.array)
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        raise ConvUNeXtError(
            f"{label.source}: label value {bad[0]:g} outside the declared classes 0 .. {num_classes - 1}"
        )
    return label.array.astype(np.uint8)


def check_matches(
    source: Any,
    shape: tuple[int, ...],
    affine: np.ndarray,
    image: Path,
    image_shape: tuple[int, ...],
    image_affine: Any,
) -> None:
    """Refuse a channel or label (``source``) whose shape or affine differs from its case's first image's.

    Raises:
        ConvUNeXtError: naming ``source``, the shapes or the image.
    """
    if tuple(shape) != tuple(image_shape):
        raise ConvUNeXtError(
            f"{source}: shape {'x'.join(map(str, shape))} does not match its image {image.name} "
            f"({'x'.join(map(str, image_shape))})"
        )
    if not same_affine(affine, image_affine):
        raise ConvUNeXtError(f"{source}: geometry (affine) does not match its image {image.name}")


def read_case(case: VolumeCase, num_classes: int | None) -> tuple[list[Volume], Volume | None]:
    """The image volumes (one per channel) and label volume of ``case``, geometry-checked.

    Raises:
        ConvUNeXtError: unreadable files, a channel or label whose shape or geometry differs from the first channel's,
            label values outside ``0 .. num_classes - 1`` (when given); the message names the file.
    """
    images = [read_volume(path) for path in case.images]
    label = read_volume(case.label, label=True) if case.label is not None else None
    first = images[0]
    for other in [*images[1:], *([label] if label is not None else [])]:
        check_matches(other.source, other.shape, other.affine, case.images[0], first.shape, first.affine)
    if label is not None and num_classes is not None:
        label = label.with_array(check_label_values(label, num_classes))
    return images, label


def read_case_label(case: VolumeCase, num_classes: int) -> Volume:
    """The label volume of labelled ``case``, checked as :func:`read_case` checks it; NIfTI images are checked from
    their headers alone (shape, affine), their voxels decoded only when they are used.

    Raises:
        ConvUNeXtError: as :func:`read_case`.
    """
    if case.label is None or not all(is_nifti_path(path) for path in case.images):
        label = read_case(case, num_classes)[1]
        if label is None:
            raise ConvUNeXtError(f"{case.images[0]}: case {case.name!r} has no label")
        return label
    image_shape, image_affine = nifti_geometry(case.images[0])
    for path in case.images[1:]:
        check_matches(path, *nifti_geometry(path), case.images[0], image_shape, image_affine)
    return read_label_on(case.label, case.images[0], image_shape, image_affine, num_classes)


def read_label_on(
    path: Path, image: Path, image_shape: tuple[int, ...], image_affine: np.ndarray, num_classes: int | None
) -> Volume:
    """The label volume ``path``, which must lie on its image's grid (``image_shape``, ``image_affine``; ``image``
    names it in errors) and, with ``num_classes``, hold class ids ``0 .. num_classes - 1`` (as uint8).

    Raises:
        ConvUNeXtError: as :func:`read_case`, naming ``path``.
    """
    label = read_volume(path, label=True)
    check_matches(path, label.shape, label.affine, image, image_shape, image_affine)
    return label if num_classes is None else label.with_array(check_label_values(label, num_classes))
