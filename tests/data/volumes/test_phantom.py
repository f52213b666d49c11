"""The built-in phantom volumes and their Decathlon-layout dataset (convunext.data.volumes.phantom)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from convunext.data.volumes import PHANTOM_LABELS, phantom_case, read_volume, same_geometry, write_phantom_dataset
from convunext.errors import ConvUNeXtError


def test_a_seed_gives_the_same_case_and_another_seed_another() -> None:
    image, label = phantom_case(3)
    again_image, again_label = phantom_case(3)
    assert np.array_equal(image.array, again_image.array) and np.array_equal(label.array, again_label.array)
    assert np.array_equal(image.affine, again_image.affine)
    other_image, other_label = phantom_case(4)
    assert not np.array_equal(label.array, other_label.array)
    assert not np.array_equal(image.affine, other_image.affine)


def test_classes_and_hounsfield_units() -> None:
    image, label = phantom_case(0)
    assert image.array.dtype == np.float32 and label.array.dtype == np.uint8
    assert image.shape == label.shape == (48, 48, 24)
    assert set(np.unique(label.array).tolist()) == {0, 1, 2}
    values = image.array
    air = values[(label.array == 0) & (values < -500)]
    tissue = values[(label.array == 0) & (values > -500)]
    assert air.size > 1000 and tissue.size > 1000
    assert air.mean() == pytest.approx(-1000, abs=2) and air.std() == pytest.approx(20, abs=2)
    assert tissue.mean() == pytest.approx(40, abs=2)
    assert values[label.array == 1].mean() == pytest.approx(80, abs=5)
    assert values[label.array == 2].mean() == pytest.approx(150, abs=5)


def test_mr_intensities_are_positive_and_ordered() -> None:
    image, label = phantom_case(0, modality="MR")
    assert image.array.min() > 0
    means = [image.array[(label.array == value) & (image.array > 150)].mean() for value in (0, 1, 2)]
    assert means == sorted(means) and means[0] == pytest.approx(300, abs=5)
    with pytest.raises(ValueError, match="modality 'PET'"):
        phantom_case(0, modality="PET")


def test_geometry_oblique_and_not() -> None:
    image, label = phantom_case(1)
    assert image.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert np.array_equal(image.affine, label.affine)
    rotation = image.affine[:3, :3] / np.array([0.8, 0.8, 2.5])
    assert np.allclose(rotation.T @ rotation, np.eye(3)) and np.linalg.det(rotation) == pytest.approx(1.0)
    angle = math.degrees(math.acos((np.trace(rotation) - 1) / 2))
    assert 10 <= angle <= 20
    assert np.allclose(image.affine @ [23.5, 23.5, 11.5, 1], [0, 0, 0, 1])  # the centre is the world origin

    straight_image, straight_label = phantom_case(1, oblique=False)
    assert np.array_equal(straight_label.array, label.array) and np.array_equal(straight_image.array, image.array)
    assert np.allclose(straight_image.affine[:3, :3], np.diag([0.8, 0.8, 2.5]))


def test_organs_are_sized_in_millimetres() -> None:
    _, label = phantom_case(2, shape=(40, 40, 40), spacing=(0.5, 0.5, 2.0))
    for value in (1, 2):
        indices = np.argwhere(label.array == value)
        extent_mm = (indices.max(axis=0) - indices.min(axis=0) + 1) * np.array([0.5, 0.5, 2.0])
        voxels = indices.max(axis=0) - indices.min(axis=0) + 1
        assert voxels[0] > 2 * voxels[2]  # four times finer in i than in k...
        assert 0.5 < extent_mm[0] / extent_mm[2] < 2.0  # ...yet of similar size in mm


def test_dataset_has_the_decathlon_layout_and_reads_back(tmp_path: Path) -> None:
    root = write_phantom_dataset(tmp_path / "Phantom", cases=2, test_cases=1, seed=5)
    assert root == tmp_path / "Phantom"
    dataset = json.loads((root / "dataset.json").read_text())
    assert dataset["modality"] == {"0": "CT"}
    assert dataset["labels"] == PHANTOM_LABELS == {"0": "background", "1": "organ", "2": "lesion"}
    assert (dataset["numTraining"], dataset["numTest"], dataset["tensorImageSize"]) == (2, 1, "3D")
    assert dataset["training"] == [
        {"image": "./imagesTr/case_000.nii.gz", "label": "./labelsTr/case_000.nii.gz"},
        {"image": "./imagesTr/case_001.nii.gz", "label": "./labelsTr/case_001.nii.gz"},
    ]
    assert dataset["test"] == ["./imagesTs/case_002.nii.gz"]
    assert sorted(str(path.relative_to(root)) for path in root.rglob("*.nii.gz")) == [
        "imagesTr/case_000.nii.gz",
        "imagesTr/case_001.nii.gz",
        "imagesTs/case_002.nii.gz",
        "labelsTr/case_000.nii.gz",
        "labelsTr/case_001.nii.gz",
    ]

    case_seed = int(np.random.SeedSequence(5).generate_state(3)[1])
    image, label = phantom_case(case_seed)
    read_image = read_volume(root / dataset["training"][1]["image"])
    read_label = read_volume(root / dataset["training"][1]["label"], label=True)
    assert np.array_equal(read_image.array, image.array) and np.array_equal(read_label.array, label.array)
    assert read_label.array.dtype == np.uint8
    assert same_geometry(read_image, image, atol=1e-5) and same_geometry(read_label, read_image, atol=0)


def test_dataset_is_byte_identical_per_seed_and_refuses_a_used_folder(tmp_path: Path) -> None:
    first = write_phantom_dataset(tmp_path / "a", cases=1, test_cases=0, seed=1, modality="MR")
    second = write_phantom_dataset(tmp_path / "b", cases=1, test_cases=0, seed=1, modality="MR")
    for name in ("imagesTr/case_000.nii.gz", "labelsTr/case_000.nii.gz", "dataset.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert json.loads((first / "dataset.json").read_text())["modality"] == {"0": "MRI"}
    with pytest.raises(ConvUNeXtError, match=r"a: exists and is not an empty folder"):
        write_phantom_dataset(first)


def test_dataset_json_has_the_fields_of_the_real_decathlon_file(hippocampus_root: Path, tmp_path: Path) -> None:
    real = json.loads((hippocampus_root / "dataset.json").read_text())
    ours = json.loads((write_phantom_dataset(tmp_path / "p", cases=1, test_cases=1) / "dataset.json").read_text())
    assert list(ours) == list(real)
    assert set(ours["training"][0]) == set(real["training"][0]) == {"image", "label"}
    assert all(entry["image"].startswith("./imagesTr/") for entry in real["training"] + ours["training"])
