"""DRIVE reader on the real copy (``$CONVUNEXT_DATA/DRIVE``, else ``../shared/data/DRIVE``) and on a miniature."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convunext.data import DriveDataset, compute_mean_std, dataset_info, detect_dataset, open_dataset
from convunext.data.drive import DRIVE_MEAN, DRIVE_STD
from convunext.errors import ConvUNeXtError


def test_real_drive_counts_and_splits(drive_root):
    sizes = {split: len(open_dataset("drive", drive_root, split)) for split in ("train", "val", "trainval", "test")}
    assert sizes == {"train": 16, "val": 4, "trainval": 20, "test": 20}
    train = open_dataset("drive", drive_root, "train").names
    val = open_dataset("drive", drive_root, "val").names
    assert val == ["21_training", "26_training", "31_training", "36_training"]
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(open_dataset("drive", drive_root, "trainval").names)
    # a folder above DRIVE works too
    assert len(open_dataset("drive", drive_root.parent, "val")) == 4
    assert detect_dataset(drive_root) == "drive"


@pytest.mark.parametrize("split", ["trainval", "test"])
def test_real_drive_every_sample(drive_root, split):
    dataset = open_dataset("drive", drive_root, split)
    assert dataset.info.has_fov and dataset.info.class_names == ["background", "vessel"]
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample["image"].dtype == torch.float32 and sample["mask"].dtype == torch.int64
        assert sample["fov"].dtype == torch.bool
        image, mask, fov = sample["image"].numpy(), sample["mask"].numpy(), sample["fov"].numpy()
        assert image.shape == (3, 584, 565) and mask.shape == fov.shape == (584, 565)
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert set(np.unique(mask).tolist()) == {0, 1}
        assert 0.05 < mask.mean() < 0.2  # vessels are ~9% of the image
        assert 0.6 < fov.mean() < 0.8  # the FOV disc
        assert (mask.astype(bool) & ~fov).sum() < 0.01 * mask.sum()  # vessels lie inside the FOV
        assert image[1][~fov].mean() < 0.1 < image[1][fov].mean()  # the FOV is aligned with the image


def test_real_drive_both_observers(drive_root):
    first = open_dataset("drive", drive_root, "test", observer=1)
    second = open_dataset("drive", drive_root, "test", observer=2)
    assert second.names == first.names
    # the second observer's files are palette GIFs holding 0/1 whose palette maps 1 to grey 253: a reader that
    # converts to grey levels would see {3, 253}; ours reads the indices
    raw = Image.open(second.records[0].mask)
    assert raw.mode == "P" and set(np.unique(np.asarray(raw)).tolist()) == {0, 1}
    dices = []
    for index in range(len(first)):
        a, b = first[index]["mask"].numpy(), second[index]["mask"].numpy()
        assert set(np.unique(b).tolist()) == {0, 1}
        dices.append(2 * ((a == 1) & (b == 1)).sum() / ((a == 1).sum() + (b == 1).sum()))
    assert 0.7 < float(np.mean(dices)) < 0.9  # the usual inter-observer agreement on DRIVE (~0.79)
    with pytest.raises(ConvUNeXtError, match="second observer"):
        open_dataset("drive", drive_root, "train", observer=2)


def test_real_drive_statistics_match_the_stored_constants(drive_root):
    mean, std = compute_mean_std(DriveDataset(drive_root, "trainval"))
    assert mean == pytest.approx(DRIVE_MEAN, abs=2e-4)
    assert std == pytest.approx(DRIVE_STD, abs=2e-4)
    info = dataset_info("drive", drive_root)
    assert info.mean == DRIVE_MEAN and info.std == DRIVE_STD
    # the reference code's constants are the average of per-image means and stds inside the FOV
    ref_mean, ref_std = compute_mean_std(DriveDataset(drive_root, "trainval"), per_image=True)
    assert ref_mean == pytest.approx((0.709, 0.381, 0.224), abs=1e-3)
    assert ref_std == pytest.approx((0.127, 0.079, 0.043), abs=1e-3)


def test_mini_drive_reader(mini_drive):
    dataset = open_dataset("drive", mini_drive, "test", observer=2)
    sample = dataset[0]
    assert sample["image"].shape == (3, 12, 10) and set(np.unique(sample["mask"].numpy()).tolist()) <= {0, 1}
    assert len(open_dataset("drive", mini_drive, "train")) == 16


def test_drive_missing_test_split(tmp_path, mini_drive):
    import shutil

    copy = tmp_path / "DRIVE"
    shutil.copytree(mini_drive / "training", copy / "training")
    with pytest.raises(ConvUNeXtError, match=r"missing split 'test'") as error:
        open_dataset("drive", copy, "test")
    assert str(copy / "test") in str(error.value)
    assert len(open_dataset("drive", copy, "train")) == 16


def test_drive_missing_mask_is_named(tmp_path, mini_drive):
    import shutil

    copy = tmp_path / "DRIVE"
    shutil.copytree(mini_drive, copy)
    (copy / "training" / "1st_manual" / "23_manual1.gif").unlink()
    with pytest.raises(ConvUNeXtError, match=r"23_training\.tif: no mask .*23_manual1\.gif not found"):
        open_dataset("drive", copy, "trainval")


def test_missing_drive_copy_fails_in_ci(tmp_path):
    """Without the real copy, the DRIVE tests fail in CI (CI=true) instead of being skipped, except in the
    fresh-clone run of .ci/run (CONVUNEXT_SHARED_OPTIONAL=1), where they skip."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, CONVUNEXT_DATA=str(tmp_path / "nowhere"), CI="true")
    env.pop("CONVUNEXT_SHARED_OPTIONAL", None)
    test = f"{__file__}::test_real_drive_counts_and_splits"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "real DRIVE copy not found" in result.stdout and "1 error" in result.stdout
    env["CONVUNEXT_SHARED_OPTIONAL"] = "1"
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "1 skipped" in result.stdout
