"""Volume, reading and writing NIfTI volumes (convunext.data.volumes): geometry, dtypes, errors, atomic writes."""

from __future__ import annotations

import errno
import gzip
import io
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from convunext.data.volumes import Volume, label_array, nifti_bytes, read_volume, same_geometry, write_nifti
from convunext.errors import ConvUNeXtError


def _oblique_affine() -> np.ndarray:
    """Voxel sizes 0.5, 0.75, 2 mm; the grid rotated 30 degrees about z; voxel (0, 0, 0) at (10, -20, 30) mm."""
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.5, 0.75, 2.0])
    affine[:3, 3] = [10, -20, 30]
    return affine


def _save(path: Path, array: np.ndarray, affine: np.ndarray | None = None, **header: float) -> Path:
    image = nib.Nifti1Image(array, np.eye(4) if affine is None else affine, dtype=array.dtype)
    for key, value in header.items():
        image.header[key] = value
    nib.save(image, path)
    return path


# --------------------------------------------------------------------------------------------------- Volume
def test_volume_spacing_is_the_norms_of_the_affine_columns() -> None:
    volume = Volume(np.zeros((2, 3, 4), np.float32), _oblique_affine())
    assert volume.spacing == pytest.approx((0.5, 0.75, 2.0))
    assert volume.shape == (2, 3, 4)
    assert volume.affine.dtype == np.float64


def test_with_array_keeps_the_geometry_and_checks_the_shape() -> None:
    volume = Volume(np.zeros((2, 3, 4), np.float32), _oblique_affine(), source=Path("a.nii.gz"), header="h")
    labels = volume.with_array(np.ones((2, 3, 4), np.uint8))
    assert labels.array.dtype == np.uint8 and np.array_equal(labels.affine, volume.affine)
    assert (labels.source, labels.header) == (Path("a.nii.gz"), "h")
    with pytest.raises(ValueError, match=r"shape \(2, 3, 5\)"):
        volume.with_array(np.ones((2, 3, 5)))


def test_volume_refuses_other_than_3d_and_4x4() -> None:
    with pytest.raises(ValueError, match="3D"):
        Volume(np.zeros((2, 3)), np.eye(4))
    with pytest.raises(ValueError, match="4x4"):
        Volume(np.zeros((2, 3, 4)), np.eye(3))


def test_same_geometry_compares_shape_and_affine_within_atol() -> None:
    a = Volume(np.zeros((2, 3, 4)), _oblique_affine())
    shifted = _oblique_affine()
    shifted[0, 3] += 0.0005
    assert same_geometry(a, Volume(np.ones((2, 3, 4)), shifted))
    shifted[0, 3] += 0.01
    assert not same_geometry(a, Volume(np.ones((2, 3, 4)), shifted))
    assert not same_geometry(a, Volume(np.zeros((2, 3, 5)), _oblique_affine()))


def test_label_array_picks_the_smallest_integer_type() -> None:
    assert label_array(np.array([[[0.0, 2.0]]]), "x").dtype == np.uint8
    assert label_array(np.array([[[0, 255]]], np.int64), "x").dtype == np.uint8
    assert label_array(np.array([[[0, 300]]], np.int64), "x").dtype == np.int16
    assert label_array(np.array([[[True, False]]]), "x").tolist() == [[[1, 0]]]
    with pytest.raises(ConvUNeXtError, match=r"^x: float labels that are not whole numbers \(value 0.5\)"):
        label_array(np.array([[[0.0, 0.5]]]), "x")
    with pytest.raises(ConvUNeXtError, match=r"^x: negative label \(value -1\)"):
        label_array(np.array([[[0, -1]]]), "x")


# --------------------------------------------------------------------------------------------------- reading
def test_nifti_round_trip_keeps_array_and_affine(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 5.5
    written = write_nifti(tmp_path / "sub" / "a.nii.gz", array, Volume(array, _oblique_affine()))
    assert written == tmp_path / "sub" / "a.nii.gz"
    volume = read_volume(written)
    assert volume.array.dtype == np.float32 and np.array_equal(volume.array, array)
    assert np.allclose(volume.affine, _oblique_affine(), atol=1e-6)
    assert volume.source == written and isinstance(volume.header, nib.Nifti1Header)
    header = nib.load(written).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 1)  # a fresh header: "scanner"
    assert np.allclose(header.get_qform(), _oblique_affine(), atol=1e-6)
    assert np.allclose(header.get_sform(), _oblique_affine(), atol=1e-6)
    assert header.get_xyzt_units()[0] == "mm"


def test_image_reads_apply_scl_slope_and_inter(tmp_path: Path) -> None:
    stored = np.array([0, 1, 2, 3, 4, 5], np.int16).reshape(1, 2, 3)
    path = _save(tmp_path / "scaled.nii", stored, scl_slope=2.0, scl_inter=-10.0)
    volume = read_volume(path)
    assert volume.array.dtype == np.float32
    assert volume.array.ravel().tolist() == [-10, -8, -6, -4, -2, 0]


def test_labels_are_integers_and_float_labels_must_be_whole(tmp_path: Path) -> None:
    whole = read_volume(_save(tmp_path / "whole.nii.gz", np.array([[[0.0, 1.0, 2.0]]], np.float32)), label=True)
    assert whole.array.dtype == np.uint8 and whole.array.ravel().tolist() == [0, 1, 2]
    assert read_volume(_save(tmp_path / "big.nii.gz", np.array([[[0, 400]]], np.int16)), label=True).array.dtype == (
        np.int16
    )
    half = _save(tmp_path / "half.nii.gz", np.array([[[0.0, 0.5]]], np.float32))
    with pytest.raises(ConvUNeXtError, match=r"half.nii.gz: float labels that are not whole numbers \(value 0.5\)"):
        read_volume(half, label=True)
    negative = _save(tmp_path / "negative.nii.gz", np.array([[[0, -3]]], np.int16))
    with pytest.raises(ConvUNeXtError, match=r"negative.nii.gz: negative label \(value -3\)"):
        read_volume(negative, label=True)


def test_a_trailing_singleton_fourth_axis_is_squeezed(tmp_path: Path) -> None:
    volume = read_volume(_save(tmp_path / "a.nii.gz", np.ones((2, 3, 4, 1), np.float32)))
    assert volume.shape == (2, 3, 4)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 3, 4, 2), "4D volume (shape 2x3x4x2) where a 3D volume is expected"),
        ((2, 3), "2D volume (shape 2x3) where a 3D volume is expected"),
    ],
)
def test_other_dimensions_are_refused(tmp_path: Path, shape: tuple[int, ...], message: str) -> None:
    path = _save(tmp_path / "a.nii.gz", np.ones(shape, np.float32))
    with pytest.raises(ConvUNeXtError) as caught:
        read_volume(path)
    assert str(caught.value) == f"{path}: {message}"


def test_nan_images_are_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "nan.nii.gz", np.full((1, 1, 2), np.nan, np.float32))
    with pytest.raises(ConvUNeXtError, match="nan.nii.gz: image holds NaN"):
        read_volume(path)


def test_damaged_files_give_one_line_naming_the_file(tmp_path: Path) -> None:
    good = _save(tmp_path / "good.nii.gz", np.arange(4000, dtype=np.float32).reshape(10, 20, 20))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    not_gzip = tmp_path / "text.nii.gz"
    not_gzip.write_text("hello")
    not_nifti = tmp_path / "text.nii"
    not_nifti.write_bytes(b"x" * 400)
    for path in (truncated, not_gzip, not_nifti):
        with pytest.raises(ConvUNeXtError) as caught:
            read_volume(path)
        assert str(caught.value).startswith(f"{path}: cannot read NIfTI file (")
        assert "\n" not in str(caught.value)


def test_other_paths_are_refused_with_what_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(ConvUNeXtError, match="missing.nii.gz: file or folder not found"):
        read_volume(tmp_path / "missing.nii.gz")
    other = tmp_path / "a.mha"
    other.write_bytes(b"ObjectType = Image\n")
    with pytest.raises(ConvUNeXtError, match=r"a.mha: unsupported volume format; expected a .nii or .nii.gz file or"):
        read_volume(other)
    single = tmp_path / "slice.dcm"
    single.write_bytes(b"\0" * 128 + b"DICM")
    with pytest.raises(ConvUNeXtError, match=rf"slice.dcm: a single DICOM file; give the folder .*\({tmp_path}\)"):
        read_volume(single)


# --------------------------------------------------------------------------------------------------- writing
def test_write_copies_a_nifti_header_with_the_new_dtype_and_no_scaling(tmp_path: Path) -> None:
    stored = nib.Nifti1Image(np.zeros((2, 3, 4), np.int16), None)
    stored.set_qform(_oblique_affine(), code=1)
    stored.set_sform(_oblique_affine(), code=2)
    stored.header["descrip"] = b"from the scanner"
    stored.header["scl_slope"], stored.header["scl_inter"] = 2.0, -1.0
    nib.save(stored, tmp_path / "image.nii")
    on_disk = nib.Nifti1Header.from_fileobj(io.BytesIO((tmp_path / "image.nii").read_bytes()))
    assert on_disk.get_slope_inter() == (2.0, -1.0)
    image = read_volume(tmp_path / "image.nii")
    assert image.array.ravel().tolist() == [-1.0] * 24
    labels = np.zeros((2, 3, 4), np.int64)  # int64, which nibabel refuses to store without a dtype
    labels[1, 2, 3] = 2
    written = nib.load(write_nifti(tmp_path / "mask.nii.gz", labels, image))
    assert written.get_data_dtype() == np.uint8
    assert np.isnan(written.header["scl_slope"]) and np.isnan(written.header["scl_inter"])
    assert np.array_equal(np.asanyarray(written.dataobj), labels)
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (1, 2)
    assert written.header["descrip"] == b"from the scanner"
    assert np.allclose(written.affine, _oblique_affine(), atol=1e-6)
    assert np.array_equal(written.header["pixdim"], image.header["pixdim"])


def test_write_refuses_a_shape_mismatch_and_other_names(tmp_path: Path) -> None:
    like = Volume(np.zeros((2, 3, 4), np.float32), np.eye(4))
    with pytest.raises(ValueError, match=r"shape \(2, 3, 5\)"):
        write_nifti(tmp_path / "a.nii.gz", np.zeros((2, 3, 5)), like)
    with pytest.raises(ConvUNeXtError, match="a.nrrd: a NIfTI file name ends in .nii or .nii.gz"):
        write_nifti(tmp_path / "a.nrrd", np.zeros((2, 3, 4)), like)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    like = Volume(np.zeros((2, 3, 4), np.float32), np.eye(4))
    previous = write_nifti(tmp_path / "a.nii.gz", np.ones((2, 3, 4), np.float32), like).read_bytes()

    def disk_full(self: Path, data: bytes) -> int:
        with open(self, "wb") as handle:
            handle.write(data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(ConvUNeXtError, match="no space left on device while writing .*a.nii.gz"):
        write_nifti(tmp_path / "a.nii.gz", np.zeros((2, 3, 4), np.float32), like)
    with pytest.raises(ConvUNeXtError, match="no space left on device while writing .*b.nii"):
        write_nifti(tmp_path / "b.nii", np.zeros((2, 3, 4), np.float32), like)
    monkeypatch.undo()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.nii.gz"]
    assert (tmp_path / "a.nii.gz").read_bytes() == previous


def test_nii_and_nii_gz_hold_the_same_image(tmp_path: Path) -> None:
    like = Volume(np.zeros((2, 3, 4), np.float32), _oblique_affine())
    array = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    plain, packed = write_nifti(tmp_path / "a.nii", array, like), write_nifti(tmp_path / "a.nii.gz", array, like)
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
    assert np.array_equal(read_volume(plain).array, array)


# --------------------------------------------------------------------------------------------------- real data
def test_real_hippocampus_pair_reads_and_a_label_writes_back(hippocampus_root: Path, tmp_path: Path) -> None:
    dataset = json.loads((hippocampus_root / "dataset.json").read_text())
    first = dataset["training"][0]
    image = read_volume(hippocampus_root / first["image"])
    label = read_volume(hippocampus_root / first["label"], label=True)
    assert image.shape == label.shape == (35, 51, 35)
    assert image.array.dtype == np.float32 and label.array.dtype == np.uint8
    assert set(np.unique(label.array).tolist()) <= {0, 1, 2}
    assert same_geometry(image, label)
    assert image.spacing == (1.0, 1.0, 1.0)

    written = write_nifti(tmp_path / "label.nii.gz", label.array, label)
    again = read_volume(written, label=True)
    assert again.shape == label.shape and np.array_equal(again.array, label.array)
    assert np.array_equal(again.affine, label.affine)
    for field in ("pixdim", "qform_code", "sform_code", "xyzt_units", "srow_x", "srow_y", "srow_z", "dim"):
        assert np.array_equal(again.header[field], label.header[field]), field


def test_real_hippocampus_images_stored_as_uint8_and_float32_both_read_as_float32(hippocampus_root: Path) -> None:
    stored = {}
    for name in ("hippocampus_001", "hippocampus_011"):
        path = hippocampus_root / "imagesTr" / f"{name}.nii.gz"
        stored[name] = str(nib.load(path).get_data_dtype())
        assert read_volume(path).array.dtype == np.float32
    assert stored == {"hippocampus_001": "uint8", "hippocampus_011": "float32"}


def test_nifti_bytes_are_write_nifti_s_file_and_take_a_channel_axis(tmp_path: Path) -> None:
    like = Volume(np.zeros((2, 3, 4), np.float32), _oblique_affine())
    array = np.random.default_rng(1).normal(size=(2, 3, 4))
    assert nifti_bytes(array, like) == write_nifti(tmp_path / "a.nii.gz", array, like).read_bytes()
    probabilities = np.random.default_rng(2).random((2, 3, 4, 3)).astype(np.float32)
    path = tmp_path / "probabilities.nii.gz"
    path.write_bytes(nifti_bytes(probabilities, like, np.float32))
    image = nib.load(path)
    assert image.shape == (2, 3, 4, 3) and np.array_equal(np.asanyarray(image.dataobj), probabilities)
    assert np.allclose(image.affine, _oblique_affine(), atol=1e-6)
    with pytest.raises(ConvUNeXtError, match=r"4D volume \(shape 2x3x4x3\)"):
        read_volume(path)
    with pytest.raises(ValueError, match=r"shape \(3, 3, 4\)"):
        nifti_bytes(np.zeros((3, 3, 4)), like)
