"""GlaS and HRF readers on miniatures of their distributed layouts, and on real copies when present."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from convunext.data import dataset_info, detect_dataset, open_dataset
from convunext.data.base import load_split_file
from convunext.errors import ConvUNeXtError


def test_glas_miniature_counts_and_binarised_instances(mini_glas):
    sizes = {
        split: len(open_dataset("glas", mini_glas.parent, split)) for split in ("train", "val", "trainval", "test")
    }
    assert sizes == {"train": 75, "val": 10, "trainval": 85, "test": 80}
    test = open_dataset("glas", mini_glas, "test")
    assert sum(name.startswith("testA_") for name in test.names) == 60
    assert sum(name.startswith("testB_") for name in test.names) == 20
    sample = test[0]
    labels = np.asarray(Image.open(mini_glas / f"{sample['name']}_anno.bmp"))
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}  # instance ids on disk
    assert np.array_equal(sample["mask"].numpy(), (labels > 0).astype(np.int64))
    assert sample["fov"].numpy().all() and not test.info.has_fov
    assert sample["image"].shape[1:] == labels.shape
    assert detect_dataset(mini_glas.parent) == "glas"


def test_glas_statistics_computed_from_training_images(mini_glas):
    info = dataset_info("glas", mini_glas)
    assert info.class_names == ["background", "gland"] and len(info.mean) == 3
    assert all(0.4 < m < 0.6 for m in info.mean)  # uniform random pixels in the miniature


def test_glas_missing_annotation(tmp_path, mini_glas):
    copy = tmp_path / "GlaS"
    shutil.copytree(mini_glas, copy)
    (copy / "testB_7_anno.bmp").unlink()
    with pytest.raises(ConvUNeXtError, match=r"testB_7\.bmp: no mask \(.*testB_7_anno\.bmp not found\)"):
        open_dataset("glas", copy, "test", check_sizes=False)


def test_glas_missing_test_split(tmp_path, mini_glas):
    copy = tmp_path / "GlaS"
    shutil.copytree(mini_glas, copy, ignore=shutil.ignore_patterns("testB_*"))
    with pytest.raises(ConvUNeXtError, match=r"missing split 'test' \(no testB_K images\)"):
        open_dataset("glas", copy, "test")


def test_hrf_miniature_fixed_stratified_split(mini_hrf):
    lists = load_split_file("hrf")
    assert len(lists["trainval"]) == 24 and len(lists["test"]) == 21 and len(lists["val"]) == 4
    assert not set(lists["trainval"]) & set(lists["test"])
    for category in ("h", "dr", "g"):
        assert sum(stem.endswith(f"_{category}") for stem in lists["trainval"]) == 8
        assert sum(stem.endswith(f"_{category}") for stem in lists["val"]) >= 1
    sizes = {split: len(open_dataset("hrf", mini_hrf, split)) for split in ("train", "val", "trainval", "test")}
    assert sizes == {"train": 20, "val": 4, "trainval": 24, "test": 21}
    dataset = open_dataset("hrf", mini_hrf.parent, "trainval")
    extensions = {record.image.suffix for record in dataset.records}
    assert extensions == {".jpg", ".JPG"}  # both cases of the extension are found
    sample = dataset[0]
    assert sample["image"].shape == (3, 8, 12)
    assert set(np.unique(sample["mask"].numpy()).tolist()) <= {0, 1}
    fov = np.asarray(Image.open(mini_hrf / "mask" / f"{sample['name']}_mask.tif"))[..., 0] > 0
    assert np.array_equal(sample["fov"].numpy(), fov) and dataset.info.has_fov
    assert detect_dataset(mini_hrf) == "hrf"


def test_hrf_image_without_mask(tmp_path, mini_hrf):
    copy = tmp_path / "HRF"
    shutil.copytree(mini_hrf, copy)
    (copy / "manual1" / "01_h.tif").unlink()
    with pytest.raises(ConvUNeXtError, match=r"01_h\.jpg: no mask \(.*manual1/01_h\.tif not found\)"):
        open_dataset("hrf", copy, "test", check_sizes=False)


def test_real_glas(glas_root):
    sizes = {split: len(open_dataset("glas", glas_root, split)) for split in ("trainval", "test")}
    assert sizes == {"trainval": 85, "test": 80}
    test = open_dataset("glas", glas_root, "test")
    assert sum(name.startswith("testA_") for name in test.names) == 60
    for dataset in (open_dataset("glas", glas_root, "trainval"), test):
        for index in range(0, len(dataset), 7):
            sample = dataset[index]
            assert sample["image"].shape[0] == 3 and sample["mask"].shape == sample["image"].shape[1:]
            assert set(np.unique(sample["mask"].numpy()).tolist()) == {0, 1}


def test_real_hrf(hrf_root):
    sizes = {split: len(open_dataset("hrf", hrf_root, split, check_sizes=True)) for split in ("trainval", "test")}
    assert sizes == {"trainval": 24, "test": 21}
    dataset = open_dataset("hrf", hrf_root, "test")
    sample = dataset[0]
    assert sample["image"].shape == (3, 2336, 3504)
    assert set(np.unique(sample["mask"].numpy()).tolist()) == {0, 1}
    assert 0.5 < sample["fov"].numpy().mean() < 0.95
