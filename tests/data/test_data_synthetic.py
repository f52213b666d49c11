"""The built-in synthetic dataset: deterministic, exact masks, fast, and not solvable by a threshold."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from convunext.data import SyntheticDataset, compute_mean_std, dataset_info, generate_vessels, open_dataset
from convunext.data.synthetic import SYNTHETIC_STATS, render_segments, split_indices, threshold_baseline
from convunext.errors import ConvUNeXtError


@pytest.mark.parametrize("task", ["vessels", "glands"])
def test_deterministic_per_seed(task):
    first = open_dataset("synthetic", None, "train", num_images=10, size=64, seed=1, task=task)
    again = open_dataset("synthetic", None, "train", num_images=10, size=64, seed=1, task=task)
    other = open_dataset("synthetic", None, "train", num_images=10, size=64, seed=2, task=task)
    for index in (0, 3):
        a, b, c = first[index], again[index], other[index]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert torch.equal(a["fov"], b["fov"]) and a["name"] == b["name"]
        assert not torch.equal(a["image"], c["image"])
    sample = first[0]
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.float32
    assert float(sample["image"].min()) >= 0.0 and float(sample["image"].max()) <= 1.0
    assert sample["mask"].dtype == torch.int64 and set(np.unique(sample["mask"].numpy()).tolist()) == {0, 1}
    assert first.info.has_fov == (task == "vessels")
    # items do not depend on the access order or on the cache
    assert torch.equal(SyntheticDataset("train", 10, 64, 1, task, cache=False)[3]["image"], first[3]["image"])


def test_splits_are_disjoint_and_fixed():
    assert split_indices("trainval", 30) == list(range(30))
    assert split_indices("val", 30) == [4, 9, 14, 19, 24, 29]
    assert len(split_indices("train", 30)) == 24 and len(split_indices("test", 30)) == 10
    sizes = {
        split: len(open_dataset("synthetic", None, split, size=32)) for split in ("train", "val", "test", "trainval")
    }
    assert sizes == {"train": 24, "val": 6, "test": 10, "trainval": 30}
    train = open_dataset("synthetic", None, "train", num_images=10, size=32)
    val = open_dataset("synthetic", None, "val", num_images=10, size=32)
    test = open_dataset("synthetic", None, "test", num_images=10, size=32)
    trainval = open_dataset("synthetic", None, "trainval", num_images=10, size=32)
    assert sorted(train.names + val.names) == sorted(trainval.names)
    assert not set(test.names) & set(trainval.names)
    assert torch.equal(val[0]["image"], trainval[4]["image"])  # val images are trainval images
    assert not any(torch.equal(test[0]["image"], trainval[i]["image"]) for i in range(len(trainval)))
    with pytest.raises(ConvUNeXtError, match="unknown task 'cells'"):
        open_dataset("synthetic", None, "train", task="cells")


def test_vessel_mask_is_exactly_the_drawn_vessels():
    result = generate_vessels(size=96, seed=5, return_segments=True)
    segments, mask, fov = result["segments"], result["mask"], result["fov"]
    assert len(segments) > 50
    widths = segments[:, 4]
    assert widths.max() > 3 * widths.min()  # vessels of decreasing width
    # brute force: every pixel centre against every capsule
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float64)
    drawn = np.zeros((96, 96), dtype=bool)
    for x0, y0, x1, y1, r0, r1 in segments.astype(np.float64):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
        drawn |= np.hypot(xx - x0 - t * dx, yy - y0 - t * dy) <= r0 + t * (r1 - r0) + 1e-4
    assert np.array_equal(mask.astype(bool), drawn & fov)
    # the vessels are visible: darker than the rest of the fundus in the green channel
    green = result["image"][..., 1]
    assert green[mask == 1].mean() < green[fov & (mask == 0)].mean() - 0.03
    assert result["image"][~fov].max() < 0.1  # dark outside the FOV disc


def test_render_segments_single_capsule():
    mask, coverage = render_segments(np.array([[2.0, 5.0, 12.0, 5.0, 1.0, 1.0]]), 11, 16)
    expected = np.zeros((11, 16), dtype=bool)
    expected[4:7, 2:13] = True
    expected[5, 1] = expected[5, 13] = True  # the round caps
    assert np.array_equal(mask, expected)
    assert np.array_equal(coverage >= 0.5, mask)


def test_generation_is_fast():
    generate_vessels(size=256, seed=0)
    # CPU time of this process (about 25 ms), so that other jobs on a busy machine do not make the test flaky
    best = min(_cpu_time(lambda seed=seed: generate_vessels(size=256, seed=seed)) for seed in range(5))
    assert best < 0.1


def _cpu_time(function) -> float:
    start = time.process_time()
    function()
    return time.process_time() - start


@pytest.mark.parametrize("task", ["vessels", "glands"])
def test_stored_statistics_match_a_recomputation(task):
    mean, std = compute_mean_std(SyntheticDataset("trainval", task=task, cache=False))
    stored_mean, stored_std = SYNTHETIC_STATS[task]
    assert mean == pytest.approx(stored_mean, abs=2e-4) and std == pytest.approx(stored_std, abs=2e-4)
    info = dataset_info("synthetic", None, task=task)
    assert info.mean == stored_mean and info.std == stored_std


@pytest.mark.parametrize("task", ["vessels", "glands"])
def test_a_threshold_does_not_solve_it(task):
    dataset = open_dataset("synthetic", None, "val", task=task)
    result = threshold_baseline(dataset, num_thresholds=51, channel="best")
    assert 0.1 < result["global_dice"] < 0.8
    assert result["per_image_dice"] < 0.8


def test_threshold_baseline_on_a_solvable_case():
    class Easy(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            mask = torch.zeros(8, 8, dtype=torch.long)
            mask[2:5, 3:6] = 1
            image = (0.2 + 0.6 * mask.float()).expand(3, 8, 8).clone()
            return {"image": image, "mask": mask, "fov": torch.ones(8, 8, dtype=torch.bool), "name": str(index)}

    result = threshold_baseline(Easy())
    assert result["global_dice"] == pytest.approx(1.0) and result["global_polarity"] == 1
    assert 0.2 <= result["global_threshold"] < 0.8
