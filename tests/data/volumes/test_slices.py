"""The slices of a volume dataset: splits by volume, slice axis, 2.5D context, foreground oversampling, intensity
normalisation per modality, and bad volumes named."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from convunext.data import dataset_info, open_dataset
from convunext.data.volumes import (
    IntensityNormalization,
    Volume,
    VolumeSliceDataset,
    fit_ct_normalization,
    largest_spacing_axis,
    parse_window,
    read_layout,
    read_volume,
    write_nifti,
    write_phantom_dataset,
)
from convunext.data.volumes import cases as volume_cases
from convunext.data.volumes.slicing import context_stack, from_slices, to_slices
from convunext.errors import ConvUNeXtError


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("ct") / "Task99_Phantom", cases=10, test_cases=1, seed=0)


def test_splits_are_by_volume_and_cover_every_case_once(phantoms: Path) -> None:
    splits = {split: VolumeSliceDataset(phantoms, split, foreground_fraction=0) for split in ("train", "val", "test")}
    cases = {split: set(dataset.case_names) for split, dataset in splits.items()}
    assert cases["train"] | cases["val"] | cases["test"] == {case.name for case in read_layout(phantoms).cases}
    assert (
        not (cases["train"] & cases["val"])
        and not (cases["train"] & cases["test"])
        and not (cases["val"] & cases["test"])
    )
    assert [len(cases[split]) for split in ("train", "val", "test")] == [
        7,
        1,
        2,
    ]  # every 5th case: test; every 5th of the rest: val
    for split, dataset in splits.items():  # no slice of a volume is served on another side
        assert {name.split("/")[0] for name in dataset.names} == cases[split]


def test_slices_run_along_the_axis_of_largest_spacing() -> None:
    assert largest_spacing_axis((0.8, 0.8, 2.5)) == 2
    assert largest_spacing_axis((3.0, 1.0, 1.0)) == 0
    assert largest_spacing_axis((1.0, 1.0, 1.0)) == 2  # isotropic: the third axis
    volume = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(from_slices(to_slices(volume, 1), 1), volume)
    assert to_slices(volume, 1).shape == (2, 4, 3, 5)


def test_a_context_stack_takes_neighbours_channel_major_and_repeats_the_end_slices() -> None:
    volume = np.arange(2 * 4).reshape(2, 4, 1, 1).astype(np.float32)  # C=2 channels, S=4 slices of 1x1
    np.testing.assert_array_equal(context_stack(volume, 0, 3).ravel(), [0, 0, 1, 4, 4, 5])
    np.testing.assert_array_equal(context_stack(volume, 2, 3).ravel(), [1, 2, 3, 5, 6, 7])
    np.testing.assert_array_equal(context_stack(volume, 3, 1).ravel(), [3, 7])


def test_items_are_normalised_slices_with_the_context_as_channels(phantoms: Path) -> None:
    dataset = VolumeSliceDataset(phantoms, "val", context=3)
    assert dataset.settings.slice_axis == 2  # the phantoms' spacing is 0.8 x 0.8 x 2.5 mm
    item = dataset[5]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (48, 48) and item["mask"].dtype == torch.int64
    assert bool(item["fov"].all())
    case, index = item["name"].split("/")
    image = read_volume(phantoms / "imagesTr" / f"{case}.nii.gz")
    expected = dataset.settings.normalizations[0].apply(image.array[:, :, int(index)])
    np.testing.assert_allclose(item["image"][1].numpy(), expected, atol=1e-5)  # the centre channel
    assert dataset.info.in_channels == 3 and dataset.info.mean == (0.0, 0.0, 0.0)


def test_ct_is_clipped_to_the_training_foreground_percentiles_then_z_scored(phantoms: Path) -> None:
    settings = VolumeSliceDataset(phantoms, "test").settings
    layout = read_layout(phantoms)
    train = [case for case in layout.cases if case.name in VolumeSliceDataset(phantoms, "train").case_names]
    values = np.concatenate(
        [read_volume(c.images[0]).array[read_volume(c.label, label=True).array > 0] for c in train]
    ).astype(np.float64)
    low, high = np.percentile(values, (0.5, 99.5))
    clipped = np.clip(values, low, high)
    ct = settings.normalizations[0]
    assert ct.scheme == "ct"
    assert ct.low == pytest.approx(low) and ct.high == pytest.approx(high)
    assert ct.mean == pytest.approx(clipped.mean()) and ct.std == pytest.approx(clipped.std())
    assert 60 < ct.mean < 140  # the organs' HU (80 and 150), not air's


def test_a_user_window_replaces_the_percentiles(phantoms: Path) -> None:
    info = dataset_info("volumes", phantoms, window="-160,240")
    window = IntensityNormalization.from_dict(info.volume["normalizations"][0])
    assert (window.scheme, window.low, window.high) == ("window", -160.0, 240.0)
    assert parse_window("-160, 240") == (-160.0, 240.0)
    with pytest.raises(ConvUNeXtError, match="LOW must be below HIGH"):
        parse_window("240,-160")
    with pytest.raises(ConvUNeXtError, match="expected LOW,HIGH"):
        parse_window("soft tissue")


def test_the_fit_refuses_a_training_set_without_foreground() -> None:
    with pytest.raises(ConvUNeXtError, match="no foreground voxel"):
        fit_ct_normalization([(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))])


def test_mr_is_z_scored_per_volume(hippocampus_root: Path) -> None:
    dataset = open_dataset("volumes", hippocampus_root, "test")
    assert dataset.settings.normalizations[0].scheme == "zscore"
    image, _ = dataset.volume(0)
    assert abs(float(image.mean())) < 1e-4 and float(image.std()) == pytest.approx(1.0, abs=1e-4)
    assert dataset.info.class_names == ["background", "Anterior", "Posterior"]


def test_training_epochs_hold_a_third_of_foreground_slices(phantoms: Path) -> None:
    plain = VolumeSliceDataset(phantoms, "train", foreground_fraction=0)
    assert len(plain) == len(plain.slices)
    dataset = VolumeSliceDataset(phantoms, "train")
    with_foreground = sum(bool((dataset[i]["mask"] > 0).any()) for i in range(len(dataset)))
    assert len(plain.foreground) / len(plain) < 1 / 3
    assert with_foreground / len(dataset) == pytest.approx(1 / 3, abs=1 / len(dataset))
    assert len(VolumeSliceDataset(phantoms, "val")) == len(VolumeSliceDataset(phantoms, "val", foreground_fraction=0))


def broken_copy(phantoms: Path, root: Path) -> Path:
    shutil.copytree(phantoms, root)
    return root


def test_a_label_volume_of_another_shape_or_geometry_is_named(phantoms: Path, tmp_path: Path) -> None:
    root = broken_copy(phantoms, tmp_path / "shape")
    label_path = root / "labelsTr" / "case_000.nii.gz"
    label = read_volume(label_path, label=True)
    cropped = Volume(label.array[:, :, :-1], label.affine)
    write_nifti(label_path, cropped.array, cropped)
    with pytest.raises(ConvUNeXtError, match=r"case_000.nii.gz: shape 48x48x23 does not match its image"):
        open_dataset("volumes", root, "trainval")
    root = broken_copy(phantoms, tmp_path / "geometry")
    label_path = root / "labelsTr" / "case_000.nii.gz"
    shifted = label.affine.copy()
    shifted[0, 3] += 5.0
    write_nifti(label_path, label.array, Volume(label.array, shifted))
    with pytest.raises(ConvUNeXtError, match=r"case_000.nii.gz: geometry \(affine\) does not match its image"):
        open_dataset("volumes", root, "trainval")


def test_label_values_outside_the_declared_classes_are_named(phantoms: Path, tmp_path: Path) -> None:
    root = broken_copy(phantoms, tmp_path / "values")
    label_path = root / "labelsTr" / "case_001.nii.gz"
    label = read_volume(label_path, label=True)
    array = label.array.copy()
    array[0, 0, 0] = 7
    write_nifti(label_path, array, label)
    with pytest.raises(ConvUNeXtError, match=r"case_001.nii.gz: label value 7 outside the declared classes 0 .. 2"):
        open_dataset("volumes", root, "trainval")


def test_fractional_float_labels_are_named(phantoms: Path, tmp_path: Path) -> None:
    root = broken_copy(phantoms, tmp_path / "float")
    label_path = root / "labelsTr" / "case_002.nii.gz"
    label = read_volume(label_path, label=True)
    write_nifti(label_path, label.array.astype(np.float32) * 0.5, label, dtype=np.float32)
    with pytest.raises(ConvUNeXtError, match=r"case_002.nii.gz: float labels that are not whole numbers"):
        open_dataset("volumes", root, "trainval")


def test_opening_reads_image_headers_only_and_validate_decodes_the_voxels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MR: z-scored per volume, so no image is needed to open the dataset (CT's percentiles read the training images)
    root = write_phantom_dataset(tmp_path / "mr", cases=6, test_cases=0, seed=1, modality="MR")
    image_path = root / "imagesTr" / "case_003.nii.gz"
    image = read_volume(image_path)
    array = image.array.copy()
    array[1, 2, 3] = np.nan
    write_nifti(image_path, array, image, dtype=np.float32)
    monkeypatch.setattr(volume_cases, "read_volume", _labels_only(volume_cases.read_volume))
    dataset = open_dataset("volumes", root, "trainval")  # the labels, never an image, to list the slices
    monkeypatch.undo()
    with pytest.raises(ConvUNeXtError, match=r"case_003.nii.gz: image holds NaN"):
        dataset.validate()


def test_a_channel_of_another_shape_is_found_from_the_headers_when_the_dataset_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_phantom_dataset(tmp_path / "mr", cases=5, test_cases=0, seed=2, modality="MR")
    image_path = root / "imagesTr" / "case_001.nii.gz"
    image = read_volume(image_path)
    write_nifti(image_path, image.array[:, :-2], Volume(image.array[:, :-2], image.affine), dtype=np.float32)
    monkeypatch.setattr(volume_cases, "read_volume", _labels_only(volume_cases.read_volume))
    with pytest.raises(ConvUNeXtError, match=r"case_001.nii.gz: shape 48x48x24 does not match its image case_001"):
        open_dataset("volumes", root, "trainval")


def _labels_only(read):
    def read_labels(path, **kwargs):
        assert Path(path).parent.name == "labelsTr", f"{path}: an image was decoded"
        return read(path, **kwargs)

    return read_labels
