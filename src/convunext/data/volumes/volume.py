"""3D volumes: :class:`Volume` (voxels plus the affine that places them in the world), reading them from NIfTI files
and DICOM series, writing them as NIfTI.

Conventions (nibabel's): ``array[i, j, k]`` in the file's voxel order; ``affine`` maps the voxel index
``(i, j, k, 1)`` to world RAS+ millimetres (x to the patient's Right, y Anterior, z Superior).

The format modules (:mod:`.nifti`, :mod:`.dicom`) work on plain arrays and affines; the functions that make or take
a :class:`Volume` are here, so that the imports go one way (format modules below this one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom.misc
from numpy.typing import DTypeLike

from ...errors import ConvUNeXtError
from ...utils.io import atomic_write
from .dicom import load_dicom_series
from .nifti import NIFTI_SUFFIXES, encode_nifti, is_nifti_path, load_nifti


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image or label volume with its geometry.

    Attributes:
        array: ``I x J x K`` voxels, indexed ``[i, j, k]`` in the file's voxel order. Images are float32, labels
            unsigned/signed integers (:func:`label_array`).
        affine: ``4 x 4`` float64; voxel ``(i, j, k, 1)`` -> world RAS+ millimetres.
        source: the file or DICOM folder read, None for a volume made in memory.
        header: a NIfTI source's nibabel header, so that a mask written for it keeps its fields; None otherwise.
    """

    array: np.ndarray
    affine: np.ndarray
    source: Path | None = None
    header: Any = None

    def __post_init__(self) -> None:
        if np.ndim(self.array) != 3:
            raise ValueError(f"a Volume holds a 3D array, got shape {np.shape(self.array)}")
        affine = np.array(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"a Volume's affine is 4x4, got shape {affine.shape}")
        object.__setattr__(self, "affine", affine)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along ``i``, ``j``, ``k`` in mm: the norms of the affine's first three columns."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(I, J, K)``, the array's shape."""
        i, j, k = self.array.shape
        return (int(i), int(j), int(k))

    def with_array(self, array: np.ndarray) -> Volume:
        """The same geometry (affine, source, header) holding ``array``, which must have this volume's shape."""
        if np.shape(array) != self.shape:
            raise ValueError(f"array of shape {np.shape(array)} for a volume of shape {self.shape}")
        return Volume(np.asarray(array), self.affine, self.source, self.header)


def same_affine(a: np.ndarray, b: np.ndarray, atol: float = 1e-3) -> bool:
    """True when the ``4 x 4`` affines ``a`` and ``b`` are equal within ``atol`` (mm, absolute)."""
    return bool(np.allclose(a, b, rtol=0.0, atol=atol))


def same_geometry(a: Volume, b: Volume, atol: float = 1e-3) -> bool:
    """True when ``a`` and ``b`` have the same shape and affines equal within ``atol`` (mm, absolute)."""
    return a.shape == b.shape and same_affine(a.affine, b.affine, atol)


def label_array(array: np.ndarray, source: str | Path) -> np.ndarray:
    """``array`` as class ids: uint8 when the largest label is at most 255, else int16 (else int32).

    Float arrays must hold whole numbers (a label file saved as float is common; 0.5 is not a label).

    Raises:
        ConvUNeXtError: non-finite, fractional or negative values, naming ``source``.
    """
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            raise ConvUNeXtError(f"{source}: labels hold NaN or infinite values (value {array[~finite][0]})")
        fractional = array != np.round(array)
        if fractional.any():
            raise ConvUNeXtError(
                f"{source}: float labels that are not whole numbers (value {array[fractional][0]:g}); "
                "is this an image rather than a label volume?"
            )
    elif not np.issubdtype(array.dtype, np.integer):
        raise ConvUNeXtError(f"{source}: labels of type {array.dtype}, expected integers")
    if array.size == 0:
        return array.astype(np.uint8)
    low, high = array.min(), array.max()
    if low < 0:
        raise ConvUNeXtError(f"{source}: negative label (value {low:g}); labels are class ids 0, 1, 2, ...")
    for dtype in (np.uint8, np.int16, np.int32):
        if high <= np.iinfo(dtype).max:
            return array.astype(dtype)
    raise ConvUNeXtError(f"{source}: label {high:g} is too large for a class id")


def read_volume(path: str | Path, *, label: bool = False) -> Volume:
    """Read a 3D volume from a NIfTI file or a DICOM series folder.

    Args:
        path: a ``.nii`` / ``.nii.gz`` file (:func:`~convunext.data.volumes.nifti.load_nifti`: a trailing
            singleton 4th axis is squeezed), or a folder holding the files of one DICOM series
            (:func:`read_dicom_series`).
        label: read class ids (:func:`label_array`: uint8, or int16 above 255) instead of a float32 image (NIfTI
            ``scl_slope``/``scl_inter`` applied as nibabel's ``get_fdata`` does; DICOM rescaled to HU for CT).

    Returns:
        The :class:`Volume`, with ``source`` = ``path`` and, for NIfTI, ``header`` = a copy of the file's header.

    Raises:
        ConvUNeXtError: a missing path; a single DICOM file (give its folder); another format; an unreadable,
            truncated or non-NIfTI file; a 2D or 4D volume; float labels that are not whole numbers, negative
            labels; the DICOM series' problems (:func:`read_dicom_series`). One line naming the path.
    """
    path = Path(path)
    if path.is_dir():
        volume = read_dicom_series(path)
        return volume.with_array(label_array(volume.array, path)) if label else volume
    if not path.exists():
        raise ConvUNeXtError(f"{path}: file or folder not found")
    if is_nifti_path(path):
        array, affine, header = load_nifti(path, label=label)
        return Volume(label_array(array, path) if label else array, affine, source=path, header=header)
    if path.suffix.lower() == ".dcm" or pydicom.misc.is_dicom(path):
        raise ConvUNeXtError(f"{path}: a single DICOM file; give the folder holding the whole series ({path.parent})")
    raise ConvUNeXtError(
        f"{path}: unsupported volume format; expected a {' or '.join(NIFTI_SUFFIXES)} file or a DICOM series folder"
    )


def read_dicom_series(folder: str | Path) -> Volume:
    """Read the one DICOM series in ``folder`` as a float32 :class:`Volume` (``source`` the folder, no header).

    Slices are ordered along the slice normal, never by file name or InstanceNumber; ``array[i, j, k]`` is column
    ``i``, row ``j`` of slice ``k`` after RescaleSlope/RescaleIntercept; the affine is DICOM's LPS geometry in
    RAS+ (details and errors: :func:`~convunext.data.volumes.dicom.load_dicom_series`).
    """
    folder = Path(folder)
    array, affine = load_dicom_series(folder)
    return Volume(array, affine, source=folder)


def _check_shape(array: np.ndarray, like: Volume) -> None:
    if array.shape[:3] != like.shape or array.ndim not in (3, 4):
        raise ValueError(f"array of shape {array.shape} for a volume of shape {like.shape}")


def nifti_bytes(array: np.ndarray, like: Volume, dtype: DTypeLike = None, *, compress: bool = True) -> bytes:
    """The bytes of the NIfTI file that :func:`write_nifti` writes (gzip-compressed, ``.nii.gz``, by default), for
    writers that put several files in place together (:func:`~convunext.utils.io.atomic_write_files`).

    Raises:
        ValueError: ``array``'s shape is not ``like.shape`` (or ``like.shape`` plus a 4th axis).
    """
    array = np.asarray(array)
    _check_shape(array, like)
    return encode_nifti(array, like.affine, like.header, dtype, compress=compress)


def write_nifti(path: str | Path, array: np.ndarray, like: Volume, dtype: DTypeLike = None) -> Path:
    """Write ``array`` as a NIfTI file with exactly ``like``'s geometry.

    Args:
        path: the destination, ending in ``.nii`` or ``.nii.gz`` (gzip-compressed); missing folders are created.
        array: ``I x J x K`` voxels in ``like``'s voxel order (``I x J x K x C`` for several maps, probabilities
            say).
        like: the volume whose affine (and, for a NIfTI source, header) the file gets.
        dtype: the stored type. By default integer and bool arrays (labels) are stored in the smallest of uint8,
            int16 and int32 that holds their values, float arrays as float32.

    For a NIfTI source the header is a copy of ``like.header`` (qform/sform codes, pixdim, units, description
    kept) with the data type updated and ``scl_slope``/``scl_inter`` reset, so the stored values are the array's;
    without one it is a fresh header with qform and sform both set to the affine, code 1 ("scanner"), units mm
    (:func:`~convunext.data.volumes.nifti.encode_nifti`). The write is atomic: a temporary file in the same folder,
    renamed into place, so a failed write leaves nothing behind (and an existing file untouched).

    Returns:
        ``path``.

    Raises:
        ValueError: ``array``'s shape is not ``like.shape``.
        ConvUNeXtError: a name that does not end in ``.nii``/``.nii.gz``; a full disk, a read-only folder...
    """
    path = Path(path)
    array = np.asarray(array)
    _check_shape(array, like)
    if not is_nifti_path(path):
        raise ConvUNeXtError(f"{path}: a NIfTI file name ends in .nii or .nii.gz")
    data = nifti_bytes(array, like, dtype, compress=path.name.lower().endswith(".gz"))
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return path
