"""DICOM series (one file per slice, one series per folder) through pydicom: reading as an array and an affine
(:func:`~convunext.data.volumes.volume.read_dicom_series` makes a ``Volume`` of them), and a small writer for tests.

Geometry: DICOM's patient coordinates are LPS (x to the patient's Left, y Posterior, z Superior). Within a slice,
``ImageOrientationPatient[:3]`` is the direction of increasing column (along a row), ``[3:]`` that of increasing
row, and ``PixelSpacing`` is ``(spacing between rows, spacing between columns)``. Slices are ordered by the
projection of ``ImagePositionPatient`` on the slice normal (the cross product of the two directions), never by file
name or ``InstanceNumber``. The volume's affine is converted to nibabel's RAS+ by negating its first two rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from ...errors import ConvUNeXtError, error_text

_SOP_CLASSES = {"CT": UID("1.2.840.10008.5.1.4.1.1.2"), "MR": UID("1.2.840.10008.5.1.4.1.1.4")}
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
_SPACING_TOLERANCE = 0.1  # a step between slices may differ from the series' median step by this fraction
_SAME_POSITION_MM = 1e-3
_GEOMETRY_ATOL = 1e-4  # PixelSpacing (mm) and direction cosines of every slice must match the first's within this
_DEFAULT_THICKNESS_MM = 1.0
_DECODE_ERRORS = (RuntimeError, NotImplementedError, ValueError, AttributeError, OSError, EOFError)


def _floats(dataset: Dataset, keyword: str, path: Path) -> np.ndarray:
    value = dataset.get(keyword)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConvUNeXtError(f"{path}: no {keyword}, so it is not a slice of a CT/MR series")
    return np.array([float(v) for v in (value if isinstance(value, Sequence) else [value])], dtype=np.float64)


def _float_or(dataset: Dataset, keyword: str, default: float) -> float:
    value = dataset.get(keyword)
    return default if value is None or value == "" else float(value)


def _dicom_files(folder: Path) -> list[tuple[Path, Dataset]]:
    """Every file directly in ``folder`` that pydicom reads as DICOM with pixel data (DICOMDIR and others skipped)."""
    found = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            dataset = pydicom.dcmread(path)
        except InvalidDicomError:
            continue  # not DICOM
        except (OSError, EOFError, ValueError, KeyError, TypeError) as error:
            raise ConvUNeXtError(f"{path}: cannot read DICOM file ({error_text(error)})") from None
        storage_class = getattr(getattr(dataset, "file_meta", None), "MediaStorageSOPClassUID", None)
        if "PixelData" in dataset and storage_class != _DICOMDIR_CLASS:
            found.append((path, dataset))
    return found


def _pixels(path: Path, dataset: Dataset) -> np.ndarray:
    """The slice's ``rows x columns`` values after RescaleSlope/RescaleIntercept (HU for CT), float64."""
    frames = int(dataset.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ConvUNeXtError(f"{path}: multi-frame DICOM file ({frames} frames); only one slice per file is read")
    if int(dataset.get("SamplesPerPixel") or 1) != 1:
        raise ConvUNeXtError(f"{path}: colour DICOM image; a CT/MR slice has one sample per pixel")
    try:
        pixels = dataset.pixel_array
    except _DECODE_ERRORS as error:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and UID(syntax).is_compressed:
            raise ConvUNeXtError(
                f"{path}: cannot decode its {UID(syntax).name} pixel data ({error_text(error)}); the file is "
                "damaged, or pydicom lacks a decoder plugin for it (install pylibjpeg with its codecs, or python-gdcm)"
            ) from None
        raise ConvUNeXtError(f"{path}: cannot read its pixel data ({error_text(error)})") from None
    slope = _float_or(dataset, "RescaleSlope", 1.0)
    intercept = _float_or(dataset, "RescaleIntercept", 0.0)
    return pixels.astype(np.float64) * slope + intercept


def _one_series(folder: Path, files: list[tuple[Path, Dataset]]) -> None:
    series: dict[str, list[Dataset]] = {}
    for _, dataset in files:
        series.setdefault(str(dataset.get("SeriesInstanceUID", "")), []).append(dataset)
    if len(series) > 1:
        listed = "; ".join(
            f"{uid or '(no SeriesInstanceUID)'} '{datasets[0].get('SeriesDescription', '')}' ({len(datasets)} slices)"
            for uid, datasets in series.items()
        )
        raise ConvUNeXtError(
            f"{folder}: {len(series)} DICOM series in one folder, expected one: {listed}; "
            "give each series its own folder"
        )


def load_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The voxels and affine of the one DICOM series in ``folder``.

    Args:
        folder: a folder holding one file per slice of a single series (SeriesInstanceUID). Files that are not
            DICOM, DICOMDIR and DICOM files without pixel data are skipped; sub-folders are not searched.

    Returns:
        ``(array, affine)``. ``array[i, j, k]`` (float32) = column ``i``, row ``j`` of the ``k``-th slice along the
        slice normal (each slice's ``pixel_array`` transposed), with RescaleSlope and RescaleIntercept applied (CT
        in HU; 1 and 0 when absent). ``affine`` (``4 x 4``, RAS+ mm): its origin is the first slice's
        ImagePositionPatient and its third column the step between consecutive slice positions, so a
        gantry-tilted series keeps its shear. A single-slice series gets a slice step of SliceThickness along the
        normal (else SpacingBetweenSlices, else 1 mm).

    Raises:
        ConvUNeXtError: no DICOM slices; several series; slices that differ in Rows/Columns, PixelSpacing or
            ImageOrientationPatient; two slices at one position; a missing slice (a step between positions more
            than 10% off the series' median step); pixel data pydicom cannot decode (a compressed transfer syntax
            without its plugin). One line naming the folder or the file.
    """
    if not folder.is_dir():
        raise ConvUNeXtError(f"{folder}: not a folder; a DICOM series is read from the folder holding its files")
    files = _dicom_files(folder)
    if not files:
        raise ConvUNeXtError(f"{folder}: no DICOM files with pixel data in this folder")
    _one_series(folder, files)

    first_path, first = files[0]
    size = (int(first.Rows), int(first.Columns))
    spacing = _floats(first, "PixelSpacing", first_path)
    orientation = _floats(first, "ImageOrientationPatient", first_path)
    positions = []
    for path, dataset in files:
        if (int(dataset.Rows), int(dataset.Columns)) != size:
            raise ConvUNeXtError(
                f"{folder}: {path.name} is {dataset.Rows}x{dataset.Columns} (rows x columns) "
                f"where {first_path.name} is {size[0]}x{size[1]}"
            )
        for keyword, reference in (("PixelSpacing", spacing), ("ImageOrientationPatient", orientation)):
            value = _floats(dataset, keyword, path)
            if value.shape != reference.shape or not np.allclose(value, reference, rtol=0, atol=_GEOMETRY_ATOL):
                raise ConvUNeXtError(
                    f"{folder}: {path.name} has {keyword} {value.tolist()} where {first_path.name} has "
                    f"{reference.tolist()}"
                )
        positions.append(_floats(dataset, "ImagePositionPatient", path))

    row_direction, column_direction = orientation[:3], orientation[3:]
    normal = np.cross(row_direction, column_direction)
    positions_lps = np.array(positions)
    along_normal = positions_lps @ normal
    order = np.argsort(along_normal, kind="stable")
    names = [files[index][0].name for index in order]
    sorted_positions = along_normal[order]
    steps = np.diff(sorted_positions)
    duplicates = np.flatnonzero(steps < _SAME_POSITION_MM)
    if duplicates.size:
        index = duplicates[0]
        raise ConvUNeXtError(
            f"{folder}: two slices at position {sorted_positions[index]:.1f} mm ({names[index]}, {names[index + 1]})"
        )
    if len(steps):
        median = float(np.median(steps))
        gaps = np.flatnonzero(np.abs(steps - median) > _SPACING_TOLERANCE * median)
        if gaps.size:
            index = gaps[0]
            what = "missing slice" if steps[index] > median else "uneven slice spacing"
            raise ConvUNeXtError(
                f"{folder}: {what} between positions {sorted_positions[index]:.1f} and "
                f"{sorted_positions[index + 1]:.1f} mm ({names[index]}, {names[index + 1]}: a step of "
                f"{steps[index]:.2f} mm where the series' is {median:.2f} mm)"
            )
        step = (positions_lps[order[-1]] - positions_lps[order[0]]) / (len(order) - 1)
    else:
        thickness = _float_or(first, "SliceThickness", 0.0) or _float_or(first, "SpacingBetweenSlices", 0.0)
        step = normal * (thickness or _DEFAULT_THICKNESS_MM)

    array = np.empty((size[1], size[0], len(order)), dtype=np.float32)
    for k, index in enumerate(order):
        path, dataset = files[index]
        array[:, :, k] = _pixels(path, dataset).T
    affine = np.eye(4)
    affine[:3, 0] = row_direction * spacing[1]
    affine[:3, 1] = column_direction * spacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = positions_lps[order[0]]
    affine[:2] = 0.0 - affine[:2]  # LPS -> RAS (0.0 - : no negative zeros)
    return array, affine


def _ds(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)  # at most 16 characters, as the DS value representation allows


def _save(dataset: Dataset, path: Path) -> None:
    if int(pydicom.__version__.split(".")[0]) >= 3:
        dataset.save_as(path, enforce_file_format=True)
    else:  # pydicom 2.4 takes the encoding from the dataset and calls a conforming file "not like original"
        dataset.is_little_endian = True
        dataset.is_implicit_VR = False
        dataset.save_as(path, write_like_original=False)


def write_dicom_series(
    folder: str | Path,
    array: np.ndarray,
    spacing: Sequence[float],
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    *,
    series_uid: str | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    modality: str = "CT",
    description: str = "convunext synthetic series",
    prefix: str = "IM",
) -> list[Path]:
    """Write ``array`` as a DICOM series, one file per slice: the inverse of :func:`load_dicom_series`.

    Not a clinical writer: it writes the attributes that geometry and intensities need (patient, study, series,
    frame of reference, image plane and pixel modules) in Explicit VR Little Endian, 16-bit signed pixels.

    Args:
        folder: where the files ``{prefix}0001.dcm``, ``{prefix}0002.dcm``, ... go (created if missing).
        array: ``I x J x K`` values (HU for CT), ``array[i, j, k]`` = column ``i``, row ``j`` of slice ``k``.
            Stored as ``round((value - intercept) / slope)`` in int16, so the series reads back exactly when the
            values lie on that grid.
        spacing: ``(column spacing along i, row spacing along j, slice step along k)`` in mm.
        orientation: ImageOrientationPatient, LPS: the unit direction of ``i`` then that of ``j``, orthogonal.
        origin: ImagePositionPatient of slice 0 (the centre of voxel ``(0, 0, 0)``), LPS mm; slice ``k`` lies
            ``k * spacing[2]`` mm further along the normal (direction of ``i`` x direction of ``j``).
        series_uid: the SeriesInstanceUID (a new one by default); write several series with one study by passing
            different ones (and prefixes).
        slope: RescaleSlope.
        intercept: RescaleIntercept.
        modality: ``"CT"`` or ``"MR"`` (the SOP class and Modality).
        description: SeriesDescription.
        prefix: the start of the file names.

    Returns:
        The files written, in slice order.

    Raises:
        ValueError: not a 3D array, an orientation that is not two orthogonal unit vectors, values that do not fit
            int16 under ``slope``/``intercept``, an unknown modality.
    """
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 3:
        raise ValueError(f"a DICOM series is written from a 3D array, got shape {array.shape}")
    if modality not in _SOP_CLASSES:
        raise ValueError(f"modality {modality!r}: expected one of {sorted(_SOP_CLASSES)}")
    directions = np.asarray(orientation, dtype=np.float64).reshape(2, 3)
    if not np.allclose(directions @ directions.T, np.eye(2), atol=1e-6):
        raise ValueError(f"orientation {list(orientation)} is not two orthogonal unit vectors")
    stored = np.round((array - intercept) / slope)
    info = np.iinfo(np.int16)
    if array.size and (stored.min() < info.min or stored.max() > info.max):
        raise ValueError(
            f"values {array.min():g}..{array.max():g} do not fit int16 with slope {slope:g}, intercept {intercept:g}"
        )
    stored = stored.astype(np.int16)
    normal = np.cross(directions[0], directions[1])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    paths = []
    for k in range(array.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = _SOP_CLASSES[modality]
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset = Dataset()
        dataset.file_meta = meta
        dataset.SOPClassUID = meta.MediaStorageSOPClassUID
        dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        dataset.Modality = modality
        dataset.PatientName = "Synthetic^Phantom"
        dataset.PatientID = "CONVUNEXT"
        dataset.StudyInstanceUID = study_uid
        dataset.SeriesInstanceUID = series_uid
        dataset.SeriesDescription = description
        dataset.SeriesNumber = 1
        dataset.InstanceNumber = k + 1
        dataset.FrameOfReferenceUID = frame_uid
        dataset.ImagePositionPatient = [_ds(v) for v in np.asarray(origin, dtype=np.float64) + k * spacing[2] * normal]
        dataset.ImageOrientationPatient = [_ds(v) for v in directions.ravel()]
        dataset.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
        dataset.SliceThickness = _ds(spacing[2])
        dataset.RescaleSlope = _ds(slope)
        dataset.RescaleIntercept = _ds(intercept)
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.Rows, dataset.Columns = array.shape[1], array.shape[0]
        dataset.BitsAllocated = 16
        dataset.BitsStored = 16
        dataset.HighBit = 15
        dataset.PixelRepresentation = 1
        dataset.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2").tobytes()
        path = folder / f"{prefix}{k + 1:04d}.dcm"
        _save(dataset, path)
        paths.append(path)
    return paths
