"""DICOM series (convunext.data.volumes.dicom): slice order, the LPS -> RAS affine, rescaling, and the errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from convunext.data.volumes import read_dicom_series, read_volume, write_dicom_series
from convunext.errors import ConvUNeXtError

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _values(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Values on the grid that slope 0.5 / intercept -1024 stores exactly."""
    return np.random.default_rng(seed).integers(-2000, 4000, size=shape) * 0.5 - 1024


# --------------------------------------------------------------------------------------------------- real sample
def test_real_sample_is_sorted_along_the_slice_normal_not_by_name(dicom_series_root: Path) -> None:
    files = sorted(dicom_series_root.glob("*.dcm"))
    datasets = {path.name: pydicom.dcmread(path) for path in files}
    first = datasets[files[0].name]
    row, column = np.array(first.ImageOrientationPatient[:3], float), np.array(first.ImageOrientationPatient[3:], float)
    normal = np.cross(row, column)
    along = {name: float(np.dot(np.array(ds.ImagePositionPatient, float), normal)) for name, ds in datasets.items()}
    by_name = [along[path.name] for path in files]  # 1.dcm, 10.dcm, 11.dcm, ...
    assert by_name != sorted(by_name)

    volume = read_dicom_series(dicom_series_root)
    assert volume.shape == (35, 51, 32)  # columns, rows, slices
    assert volume.array.dtype == np.float32 and volume.source == dicom_series_root
    ordered = sorted(datasets, key=along.__getitem__)
    assert ordered[:3] == ["1.dcm", "2.dcm", "3.dcm"] and ordered[-1] == "32.dcm"
    for k in (0, 9, 31):
        assert np.array_equal(volume.array[:, :, k], datasets[ordered[k]].pixel_array.T)

    # By hand from the first and last slices: LPS columns (row cosine x column spacing, column cosine x row spacing,
    # (last - first) / 31, first position), then x and y negated for RAS.
    low, high = datasets[ordered[0]], datasets[ordered[-1]]
    row_spacing, column_spacing = (float(v) for v in low.PixelSpacing)
    first_position = np.array(low.ImagePositionPatient, float)
    last_position = np.array(high.ImagePositionPatient, float)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row * column_spacing, column * row_spacing
    lps[:3, 2], lps[:3, 3] = (last_position - first_position) / 31, first_position
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    assert np.allclose(volume.affine, expected)
    assert np.allclose(volume.affine, [[-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]])
    ras_last = last_position * [-1, -1, 1]
    assert np.allclose(volume.affine @ [0, 0, 31, 1], [*ras_last, 1])
    assert volume.spacing == (1.0, 1.0, 1.0)


def test_real_sample_reads_through_read_volume(dicom_series_root: Path) -> None:
    assert read_volume(dicom_series_root).shape == (35, 51, 32)
    with pytest.raises(ConvUNeXtError, match=r"a single DICOM file; give the folder"):
        read_volume(dicom_series_root / "1.dcm")


# --------------------------------------------------------------------------------------------------- round trips
def test_oblique_series_with_rescale_round_trips_exactly(tmp_path: Path) -> None:
    array = _values((5, 4, 6))
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    orientation = (1.0, 0.0, 0.0, 0.0, c, s)  # rows tilted 20 degrees from y towards z (LPS)
    paths = write_dicom_series(
        tmp_path, array, (0.7, 0.9, 2.0), orientation, (10.0, -20.0, 30.0), slope=0.5, intercept=-1024
    )
    assert [path.name for path in paths] == [f"IM{k:04d}.dcm" for k in range(1, 7)]
    stored = pydicom.dcmread(paths[0])
    assert (stored.Rows, stored.Columns) == (4, 5)
    assert (float(stored.RescaleSlope), float(stored.RescaleIntercept)) == (0.5, -1024.0)
    volume = read_dicom_series(tmp_path)
    assert volume.array.dtype == np.float32 and np.array_equal(volume.array, array)
    normal = np.cross([1, 0, 0], [0, c, s])  # (0, -s, c)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = [0.7, 0, 0], [0, 0.9 * c, 0.9 * s], 2.0 * normal
    lps[:3, 3] = [10, -20, 30]
    assert np.allclose(volume.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, atol=1e-9)
    assert volume.spacing == pytest.approx((0.7, 0.9, 2.0))


def test_sagittal_affine_by_hand(tmp_path: Path) -> None:
    # Columns run posterior (+y LPS), rows inferior (-z); the normal is (0,1,0) x (0,0,-1) = (-1, 0, 0).
    write_dicom_series(tmp_path, _values((2, 3, 4)), (0.5, 0.8, 3.0), (0, 1, 0, 0, 0, -1), (5, -10, 20), slope=0.5)
    volume = read_dicom_series(tmp_path)
    assert np.allclose(volume.affine, [[0, 0, 3, -5], [-0.5, 0, 0, 10], [0, -0.8, 0, 20], [0, 0, 0, 1]])


def test_names_and_instance_numbers_do_not_order_slices(tmp_path: Path) -> None:
    array = _values((3, 3, 6))
    reference = read_dicom_series(write_dicom_series(tmp_path / "a", array, (1, 1, 2), slope=0.5)[0].parent)
    renamed = tmp_path / "b"
    paths = write_dicom_series(renamed, array, (1, 1, 2), slope=0.5)
    for k, path in enumerate(paths):  # IM0001 (lowest slice, InstanceNumber 1) becomes z6.dcm, and so on
        path.rename(renamed / f"z{6 - k}.dcm")
    volume = read_dicom_series(renamed)
    assert np.array_equal(volume.array, reference.array) and np.allclose(volume.affine, reference.affine)


def test_other_files_are_skipped_and_labels_read_as_integers(tmp_path: Path) -> None:
    paths = write_dicom_series(tmp_path, np.arange(24.0).reshape(2, 3, 4) % 3, (1, 1, 1))
    (tmp_path / "notes.txt").write_text("not DICOM")
    no_pixels = pydicom.dcmread(paths[0])
    del no_pixels.PixelData
    no_pixels.save_as(tmp_path / "DICOMDIR")
    (tmp_path / "sub").mkdir()
    volume = read_volume(tmp_path, label=True)
    assert volume.shape == (2, 3, 4) and volume.array.dtype == np.uint8
    assert set(np.unique(volume.array).tolist()) == {0, 1, 2}


def test_a_single_slice_takes_its_thickness(tmp_path: Path) -> None:
    write_dicom_series(tmp_path, np.zeros((3, 4, 1)), (0.5, 0.5, 2.5), origin=(1, 2, 3))
    assert np.allclose(
        read_dicom_series(tmp_path).affine, [[-0.5, 0, 0, -1], [0, -0.5, 0, -2], [0, 0, 2.5, 3], [0] * 3 + [1]]
    )


# --------------------------------------------------------------------------------------------------- errors
def test_two_series_in_one_folder(tmp_path: Path) -> None:
    write_dicom_series(tmp_path, np.zeros((2, 2, 3)), (1, 1, 1), series_uid="1.2.3.1", description="T1", prefix="A")
    write_dicom_series(tmp_path, np.zeros((2, 2, 2)), (1, 1, 1), series_uid="1.2.3.2", description="T2", prefix="B")
    with pytest.raises(ConvUNeXtError) as caught:
        read_dicom_series(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path}: 2 DICOM series in one folder, expected one: 1.2.3.1 'T1' (3 slices); 1.2.3.2 'T2' (2 slices); "
        "give each series its own folder"
    )


def test_a_missing_slice(tmp_path: Path) -> None:
    paths = write_dicom_series(tmp_path, np.zeros((2, 2, 6)), (1, 1, 4.0), origin=(0, 0, 0))  # z = 0, 4, ..., 20
    paths[3].unlink()  # z = 12
    with pytest.raises(ConvUNeXtError) as caught:
        read_dicom_series(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path}: missing slice between positions 8.0 and 16.0 mm (IM0003.dcm, IM0005.dcm: a step of 8.00 mm "
        "where the series' is 4.00 mm)"
    )


def test_two_slices_at_one_position(tmp_path: Path) -> None:
    write_dicom_series(tmp_path, np.zeros((2, 2, 2)), (1, 1, 1), series_uid="1.2.3", prefix="A")
    write_dicom_series(tmp_path, np.zeros((2, 2, 2)), (1, 1, 1), series_uid="1.2.3", prefix="B")
    with pytest.raises(ConvUNeXtError, match=r"two slices at position 0.0 mm \(A0001.dcm, B0001.dcm\)"):
        read_dicom_series(tmp_path)


def test_no_dicom_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConvUNeXtError) as caught:
        read_dicom_series(tmp_path)
    assert str(caught.value) == f"{tmp_path}: no DICOM files with pixel data in this folder"
    with pytest.raises(ConvUNeXtError, match="not a folder"):
        read_dicom_series(tmp_path / "notes.txt")


def test_mismatched_rows_and_columns(tmp_path: Path) -> None:
    write_dicom_series(tmp_path, np.zeros((4, 5, 2)), (1, 1, 1), series_uid="1.2.3", prefix="A")
    write_dicom_series(tmp_path, np.zeros((4, 6, 2)), (1, 1, 1), origin=(0, 0, 2), series_uid="1.2.3", prefix="B")
    with pytest.raises(ConvUNeXtError) as caught:
        read_dicom_series(tmp_path)
    assert str(caught.value) == f"{tmp_path}: B0001.dcm is 6x4 (rows x columns) where A0001.dcm is 5x4"


def test_mismatched_orientation(tmp_path: Path) -> None:
    write_dicom_series(tmp_path, np.zeros((2, 2, 2)), (1, 1, 1), series_uid="1.2.3", prefix="A")
    write_dicom_series(
        tmp_path, np.zeros((2, 2, 2)), (1, 1, 1), (0, 1, 0, 1, 0, 0), (0, 0, 5), series_uid="1.2.3", prefix="B"
    )
    with pytest.raises(ConvUNeXtError, match=r"B0001.dcm has ImageOrientationPatient \[0.0, 1.0, 0.0, 1.0, 0.0, 0.0\]"):
        read_dicom_series(tmp_path)


def test_undecodable_compressed_pixel_data(tmp_path: Path) -> None:
    dataset = pydicom.dcmread(write_dicom_series(tmp_path, np.zeros((2, 2, 1)), (1, 1, 1))[0])
    dataset.file_meta.TransferSyntaxUID = JPEG2000Lossless
    dataset.PixelData = encapsulate([b"\0" * 16])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(tmp_path / "IM0001.dcm")
    with pytest.raises(ConvUNeXtError) as caught:
        read_dicom_series(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'IM0001.dcm'}: cannot decode its JPEG 2000 Image Compression (Lossless")
    assert "pylibjpeg" in message and "\n" not in message


def test_writer_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="orthogonal unit vectors"):
        write_dicom_series(tmp_path, np.zeros((2, 2, 2)), (1, 1, 1), (1, 0, 0, 1, 0, 0))
    with pytest.raises(ValueError, match="do not fit int16"):
        write_dicom_series(tmp_path, np.full((2, 2, 2), 40000.0), (1, 1, 1))
    assert list(tmp_path.iterdir()) == []
