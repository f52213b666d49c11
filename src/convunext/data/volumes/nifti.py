"""NIfTI-1/NIfTI-2 files (``.nii``, ``.nii.gz``) through nibabel, as plain arrays, affines and headers.

:mod:`.volume` makes :class:`~convunext.data.volumes.volume.Volume` objects of them (``read_volume``,
``write_nifti``); this module does not know that class, so that :mod:`.volume` can import it.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from numpy.typing import DTypeLike

from ...errors import ConvUNeXtError, error_text

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NIFTI_READ_ERRORS = (  # what nibabel raises on a bad file
    ImageFileError,
    HeaderDataError,
    OSError,
    EOFError,
    ValueError,
    zlib.error,
)
_SCANNER = 1  # NIfTI xform code "scanner anatomical": the code of a DICOM-derived affine (dcm2niix writes it too)


def is_nifti_path(path: str | Path) -> bool:
    """True when ``path``'s name ends with ``.nii`` or ``.nii.gz`` (any case)."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | Path) -> str:
    """The file name without ``.nii.gz`` / ``.nii`` (``case_001.nii.gz`` -> ``case_001``)."""
    name = Path(path).name
    for suffix in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def nifti_geometry(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """The 3D shape and the affine of a NIfTI file, from its header alone (no voxel is decoded); trailing axes of
    length 1 are dropped as :func:`load_nifti` drops them.

    Raises:
        ConvUNeXtError: a missing or unreadable file, or one that is not 3D, naming it.
    """
    if not path.is_file():
        raise ConvUNeXtError(f"{path}: file not found")
    try:
        image = nib.load(path)
    except NIFTI_READ_ERRORS as error:
        raise ConvUNeXtError(f"{path}: cannot read NIfTI file ({error_text(error)})") from None
    return _three_d(path, image.shape), image.affine


def _three_d(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``shape`` without its trailing axes of length 1 (``I x J x K x 1``, as some tools save 3D volumes), which
    must leave 3 axes; else a one-line error naming ``path``."""
    kept = tuple(int(size) for size in shape)
    while len(kept) > 3 and kept[-1] == 1:
        kept = kept[:-1]
    if len(kept) != 3:
        raise ConvUNeXtError(
            f"{path}: {len(kept)}D volume (shape {'x'.join(map(str, shape))}) where a 3D volume is expected"
        )
    return kept  # type: ignore[return-value]


def nifti_spacing(path: Path) -> tuple[float, float, float]:
    """The voxel size (mm) along the file's first three axes, from the header alone (:func:`nifti_geometry`).

    Raises:
        ConvUNeXtError: a missing or unreadable file, naming it.
    """
    norms = np.linalg.norm(nifti_geometry(path)[1][:3, :3], axis=0)
    return (float(norms[0]), float(norms[1]), float(norms[2]))


def load_nifti(path: Path, *, label: bool = False) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """The 3D array, affine and header of a NIfTI file (read it through
    :func:`~convunext.data.volumes.volume.read_volume`, which makes a :class:`~convunext.data.volumes.volume.Volume`).

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        label: return the stored values as they are (after ``scl_slope``/``scl_inter``, if set) for the caller to
            turn into class ids, instead of a float32 image (the scaling applied as nibabel's ``get_fdata`` does).

    Returns:
        ``(array, affine, header)``: ``I x J x K``; nibabel's affine (the sform when its code is set, else the
        qform), voxel -> RAS+ mm; a copy of the header (a Nifti1Header or Nifti2Header). A 4D file whose trailing
        axes are all of length 1 (``I x J x K x 1``, as some tools save 3D volumes) is read as ``I x J x K``.

    Raises:
        ConvUNeXtError: a missing, unreadable, truncated or non-NIfTI file; a 2D or truly 4D volume; an image with
            NaN or infinite voxels. One line naming the file.
    """
    if not path.is_file():
        raise ConvUNeXtError(f"{path}: file not found")
    try:
        image = nib.load(path)
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ConvUNeXtError(f"{path}: not a NIfTI file (nibabel reads it as {type(image).__name__})")
        shape = _three_d(path, image.shape)  # from the header: a 4D file is refused before it is decoded
        data = np.asanyarray(image.dataobj) if label else image.get_fdata(dtype=np.float32)
    except NIFTI_READ_ERRORS as error:
        raise ConvUNeXtError(f"{path}: cannot read NIfTI file ({error_text(error)})") from None
    data = data.reshape(shape)
    if not label and not np.isfinite(data).all():
        raise ConvUNeXtError(f"{path}: image holds NaN or infinite voxels")
    return np.ascontiguousarray(data), image.affine, image.header.copy()


def _default_dtype(array: np.ndarray) -> np.dtype:
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        high = int(array.max()) if array.size else 0
        low = int(array.min()) if array.size else 0
        for dtype in (np.uint8, np.int16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= low and high <= info.max:
                return np.dtype(dtype)
        raise ValueError(f"integer values {low}..{high} do not fit int32; pass dtype")
    return np.dtype(np.float32)


def encode_nifti(
    array: np.ndarray, affine: np.ndarray, header: Any = None, dtype: DTypeLike = None, compress: bool = True
) -> bytes:
    """The bytes of a NIfTI file holding ``array`` with exactly ``affine``.

    Args:
        array: ``I x J x K`` (or ``I x J x K x C``) voxels.
        affine: ``4 x 4``, voxel -> RAS+ mm.
        header: a NIfTI header to copy (its qform/sform codes, units, description... are kept; the data type is
            updated and ``scl_slope``/``scl_inter`` reset, so the stored values are the array's). Anything else
            (None): a fresh header with qform and sform both the affine, code 1 ("scanner", what a DICOM-derived
            affine is), units mm.
        dtype: the stored type. By default integer and bool arrays (labels) are stored in the smallest of uint8,
            int16 and int32 that holds their values, float arrays as float32.
        compress: gzip the bytes (a ``.nii.gz`` file), at nibabel's level 1 and with no time stamp, so the same
            volume always gives the same bytes.
    """
    dtype = _default_dtype(array) if dtype is None else np.dtype(dtype)
    data = np.asarray(array).astype(dtype, copy=False)
    if isinstance(header, (nib.Nifti1Header, nib.Nifti2Header)):
        header = header.copy()
        header.set_data_dtype(dtype)
        header.set_slope_inter(None, None)
        kind = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        image = kind(data, affine, header=header)
    else:
        image = nib.Nifti1Image(data, affine, dtype=dtype)
        image.set_qform(affine, code=_SCANNER)
        image.set_sform(affine, code=_SCANNER)
        image.header.set_xyzt_units("mm")
    encoded = image.to_bytes()
    return gzip.compress(encoded, compresslevel=1, mtime=0) if compress else encoded
