"""The mixed dataset: DRIVE, STARE and HRF as one training set, each resized to one field-of-view diameter and drawn
equally often; on the miniatures (tests/data/conftest.py), whose fields of view are discs of known diameters, and
on the real copies."""

from __future__ import annotations

import math
import shutil
from collections import Counter

import pytest
import torch

from convunext.data import (
    DatasetInfo,
    MixedDataset,
    compute_mean_std,
    dataset_info,
    dataset_spec,
    detect_dataset,
    open_dataset,
)
from convunext.data.base import load_split_file, split_stems
from convunext.data.drive import DRIVE_INFO
from convunext.data.fov import dataset_fov_diameter, fov_diameter
from convunext.data.mixed import mixture_mean_std, rescale_sample
from convunext.errors import ConvUNeXtError
from convunext.reproduce.plan import DATASETS
from convunext.training.config import ExperimentConfig
from convunext.training.trainer import Trainer

# The miniatures' fields of view are discs as wide as the image's short side: DRIVE 12x10 -> 10 px, STARE 16x18 (derived
# from the image) -> 16 px, HRF 8x12 -> 8 px. The default common diameter is their geometric mean, cube root of 1280 =
# 10.86, rounded: 11 px.
DIAMETERS = {"drive": 10.0, "stare": 16.0, "hrf": 8.0}
COMMON = 11.0
TRAIN = {name: split_stems(load_split_file(name), "train") for name in DIAMETERS}  # 16, 8 and 20 images


def names(dataset_name: str, split: str) -> list[str]:
    return [f"{dataset_name}/{stem}" for stem in split_stems(load_split_file(dataset_name), split)]


def test_an_epoch_of_the_train_split_draws_each_dataset_equally_often(mini_mixed):
    train = open_dataset("mixed", mini_mixed, "train")
    assert isinstance(train, MixedDataset) and train.datasets == ("drive", "stare", "hrf")
    assert len(train) == 3 * 20  # 3 datasets x HRF's 20 training images
    drawn = Counter(name.split("/")[0] for name in train.names)
    assert drawn == {"drive": 20, "stare": 20, "hrf": 20}
    # item i is item (i // 3) % len of dataset i % 3: DRIVE's first 4 and STARE's 8 images come round again
    first = ["drive/22_training", "stare/im0002", "hrf/02_h", "drive/23_training", "stare/im0003", "hrf/05_h"]
    assert train.names[:6] == first
    assert train.names[0::3] == [f"drive/{stem}" for stem in TRAIN["drive"] + TRAIN["drive"][:4]]
    assert train.names[1::3] == [f"stare/{stem}" for stem in TRAIN["stare"] * 2 + TRAIN["stare"][:4]]
    assert train.names[2::3] == [f"hrf/{stem}" for stem in TRAIN["hrf"]]
    assert [train[index]["name"] for index in (0, 1, 2, 49)] == [train.names[index] for index in (0, 1, 2, 49)]
    assert train[-1]["name"] == train.names[-1] == "hrf/" + TRAIN["hrf"][-1]
    with pytest.raises(IndexError):
        train[60]


@pytest.mark.parametrize(("split", "size"), [("val", 4 + 2 + 4), ("test", 20 + 10 + 21), ("trainval", 20 + 10 + 24)])
def test_val_test_and_trainval_hold_every_image_once_in_dataset_order(mini_mixed, split, size):
    dataset = open_dataset("mixed", mini_mixed, split)
    expected = names("drive", split) + names("stare", split) + names("hrf", split)
    assert len(dataset) == size and dataset.names == expected and len(set(expected)) == size
    assert [dataset[index]["name"] for index in (0, size - 1)] == [expected[0], expected[-1]]


def test_each_dataset_is_resized_to_the_common_field_of_view(mini_mixed):
    val = open_dataset("mixed", mini_mixed, "val")
    assert val.source_diameters == DIAMETERS and val.fov_diameter == COMMON
    assert val.factors == {"drive": 11 / 10, "stare": 11 / 16, "hrf": 11 / 8}
    assert repr(val).endswith("fov_diameter=11: drive x1.100 (4), stare x0.688 (2), hrf x1.375 (4))")
    first = {name: val.names.index(f"{name}/{split_stems(load_split_file(name), 'val')[0]}") for name in DIAMETERS}
    # sides round(side x factor): DRIVE 12x10 -> 13x11, STARE 16x18 -> 11x12 (12.375), HRF 8x12 -> 11x16 (16.5 to even)
    shapes = {"drive": (13, 11), "stare": (11, 12), "hrf": (11, 16)}
    for name, index in first.items():
        sample = val[index]
        assert sample["image"].shape == (3, *shapes[name]) and sample["image"].dtype == torch.float32
        assert sample["mask"].shape == sample["fov"].shape == shapes[name] and sample["mask"].dtype == torch.int64
        assert set(sample["mask"].unique().tolist()) <= {0, 1}
        assert 0 <= sample["image"].min() <= sample["image"].max() <= 1
        assert abs(fov_diameter(sample["fov"].numpy()) - COMMON) <= 1
    # a given diameter; the median diameter of the items, which the trainer records as the model's scale, is it
    train = open_dataset("mixed", mini_mixed, "train", fov_diameter=40)
    assert train.factors == {"drive": 4.0, "stare": 2.5, "hrf": 5.0} and dataset_fov_diameter(train) == 40


def test_rescale_sample_is_bilinear_for_the_image_and_nearest_for_mask_and_fov():
    sample = {
        "image": torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]),
        "mask": torch.tensor([[0, 1], [255, 0]]),
        "fov": torch.tensor([[True, False], [True, True]]),
        "name": "a",
    }
    doubled = rescale_sample(sample, 2.0)
    # pixel centres of the 4 output columns fall at input x = -0.25, 0.25, 0.75, 1.25 (clamped): 0, 0.25, 0.75, 1
    assert torch.allclose(doubled["image"][0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    assert doubled["mask"].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [255, 255, 0, 0], [255, 255, 0, 0]]
    assert doubled["fov"].tolist() == [[True, True, False, False]] * 2 + [[True] * 4] * 2 and doubled["name"] == "a"
    halved = rescale_sample({**sample, "image": torch.full((3, 4, 4), 0.3)}, 0.5)
    assert halved["image"].shape == (3, 2, 2) and torch.allclose(halved["image"], torch.tensor(0.3))
    assert rescale_sample(sample, 1.2) is sample  # round(2 x 1.2) = 2: nothing to resize


class CountingReads(torch.utils.data.Dataset):
    """A dataset that counts how often each item is read."""

    def __init__(self, dataset):
        self.dataset, self.reads = dataset, Counter()
        self.names = dataset.names

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.reads[index] += 1
        return self.dataset[index]


def test_shrunk_items_are_read_once_and_every_read_returns_copies(mini_mixed):
    val = open_dataset("mixed", mini_mixed, "val")  # STARE is shrunk (x0.69), DRIVE and HRF enlarged
    val.sources = [CountingReads(source) for source in val.sources]
    stare, drive = val.names.index("stare/im0001"), 0
    first = val[stare]
    first["image"].zero_()
    first["mask"].fill_(7)
    again = val[stare]
    assert again["image"].max() > 0 and set(again["mask"].unique().tolist()) <= {0, 1}
    assert again["mask"].dtype == torch.int64 and torch.equal(val[stare]["image"], again["image"])
    val[drive], val[drive]
    assert val.sources[1].reads == {0: 1} and val.sources[0].reads == {0: 2}


def test_statistics_are_the_equal_weight_mixture_of_the_datasets(mini_mixed):
    info = dataset_info("mixed", mini_mixed)
    stare = compute_mean_std(open_dataset("stare", mini_mixed, "trainval"))
    hrf = compute_mean_std(open_dataset("hrf", mini_mixed, "trainval"), reduce=4)
    parts = [(DRIVE_INFO.mean, DRIVE_INFO.std), stare, hrf]
    mean = [sum(part[0][c] for part in parts) / 3 for c in range(3)]
    second_moment = [sum(part[1][c] ** 2 + part[0][c] ** 2 for part in parts) / 3 for c in range(3)]
    std = [math.sqrt(second_moment[c] - mean[c] ** 2) for c in range(3)]
    assert info.mean == pytest.approx(mean, abs=6e-5) and info.std == pytest.approx(std, abs=6e-5)
    assert info.class_names == ["background", "vessel"] and info.has_fov and info.in_channels == 3
    assert info.name == "mixed" and open_dataset("mixed", mini_mixed, "train").info == info
    # by hand: means 0.2 and 0.4 with stds 0.1: mean 0.3, variance 0.01 + 0.01 (the means' spread) = 0.02
    two = [DatasetInfo("a", mean=(0.2,), std=(0.1,)), DatasetInfo("b", mean=(0.4,), std=(0.1,))]
    assert mixture_mean_std(two) == ((0.3,), (round(math.sqrt(0.02), 4),))


def test_a_subset_of_the_datasets_in_another_order(mini_mixed):
    train = open_dataset("mixed", mini_mixed, "train", datasets=["STARE", "drive"])
    assert train.datasets == ("stare", "drive") and len(train) == 2 * 16
    assert train.fov_diameter == round(math.sqrt(16 * 10)) == 13
    assert train.names[:2] == ["stare/im0002", "drive/22_training"]


EXPECTED = "expected some of drive, hrf, stare, chase_db1"
UNMIXABLE = "cannot be mixed: not a retinal vessel dataset with fields of view"


@pytest.mark.parametrize(
    ("datasets", "problem"),
    [
        (["drive", "nope"], f"unknown dataset 'nope' in datasets; {EXPECTED}"),
        (["glas"], f"'glas' {UNMIXABLE}; {EXPECTED}"),
        (["drive", "folder"], f"'folder' {UNMIXABLE}; {EXPECTED}"),
        (["synthetic"], f"'synthetic' {UNMIXABLE}; {EXPECTED}"),
        (["drive", "DRIVE"], "'drive' is named twice in datasets"),
        ([], f"datasets must list the datasets to mix, got \\[\\]; {EXPECTED}"),
        ("drive", f"datasets must list the datasets to mix, got 'drive'; {EXPECTED}"),
    ],
)
def test_bad_datasets_are_refused_in_one_line(mini_mixed, datasets, problem):
    with pytest.raises(ConvUNeXtError, match=f"^dataset 'mixed': {problem}$"):
        open_dataset("mixed", mini_mixed, "train", datasets=datasets)
    with pytest.raises(ConvUNeXtError, match=f"^dataset 'mixed': {problem}$"):
        dataset_info("mixed", mini_mixed, datasets=datasets)


@pytest.mark.parametrize("value", [0, -3, float("inf"), "big", True])
def test_a_bad_fov_diameter_is_refused(mini_mixed, value):
    message = f"^dataset 'mixed': fov_diameter must be a positive number of pixels, got {value!r}$"
    with pytest.raises(ConvUNeXtError, match=message):
        open_dataset("mixed", mini_mixed, "val", fov_diameter=value)


def test_a_dataset_missing_under_the_root_is_named(tmp_path, mini_drive, mini_stare):
    shutil.copytree(mini_drive, tmp_path / "DRIVE")
    shutil.copytree(mini_stare, tmp_path / "STARE")
    expected = f"^{tmp_path}: no HRF copy found \\(expected images/, manual1/ and mask/ folders\\)$"
    with pytest.raises(ConvUNeXtError, match=expected):
        open_dataset("mixed", tmp_path, "train")
    assert len(open_dataset("mixed", tmp_path, "val", datasets=["drive", "stare"])) == 6
    assert detect_dataset(tmp_path) == "drive"  # not all three: not the mixture's layout
    with pytest.raises(ConvUNeXtError, match="^dataset 'mixed' needs a root folder$"):
        open_dataset("mixed", None, "train")


def test_the_mixture_is_registered_without_a_preset_and_named_not_detected(mini_mixed):
    spec = dataset_spec("mixed")
    assert spec.preset is None and "mixed" not in DATASETS  # `convunext reproduce` does not train it
    assert not spec.vessel_metrics  # reports score its sources one by one
    # a folder of datasets side by side is the first of them unless --dataset mixed says otherwise
    assert detect_dataset(mini_mixed) == "drive" and spec.locate(mini_mixed) == mini_mixed and not spec.detected


def test_the_retina_vessels_preset_loads_and_validates():
    config = ExperimentConfig.from_yaml("retina-vessels", ["data.root=../shared/data"])
    assert config.data.name == "mixed" and config.data.root == "../shared/data" and config.data.crop_size == 256
    assert config.data.options == {"datasets": ["drive", "stare", "hrf"], "skip_unannotated": True}
    assert (config.optim.recipe, config.optim.batch_size, config.optim.lr, config.optim.decay) == (
        "reference",
        4,
        1.5e-3,
        "poly",
    )
    # 3 x 19 training images (HRF without 12_h) = 14 batches of 4: 86 epochs are the 1,200 steps of the cpu budget
    steps_per_epoch = 3 * 19 // 4
    assert config.train.epochs == math.ceil(1200 / steps_per_epoch) == 86
    assert config.optim.warmup_epochs == pytest.approx(86 / 300, abs=1e-6) and config.train.precise_bn_batches == 4
    assert config.train.epochs // config.train.eval_every + 1 == 10  # validations, the last one included


def test_the_trainer_records_the_common_scale(tmp_path, mini_mixed):
    config = ExperimentConfig.from_yaml(
        "retina-vessels",
        [
            f"data.root={mini_mixed}",
            "data.options.skip_unannotated=false",
            "data.options.fov_diameter=40",
            "data.crop_size=32",
            "model.kwargs.width=8",
            "train.epochs=1",
            "train.eval_every=1",
            "train.progress_bar=false",
            f"train.output_dir={tmp_path}",
            "train.run_name=mixed",
        ],
    )
    trainer = Trainer(config)
    assert trainer.fov_diameter == 40 and trainer.info == dataset_info("mixed", mini_mixed)
    result = trainer.fit()
    assert result.epochs_run == 1 and 0 <= result.best_metrics["dice_fg_mean"] <= 1
    meta = trainer.checkpoint_meta(1, result.best_metrics)
    assert meta["scale"] == {"fov_diameter": 40.0} and meta["data"]["name"] == "mixed"


def test_real_datasets_arrive_at_the_common_field_of_view(drive_root, stare_root, hrf_root):
    root = drive_root.parent
    assert stare_root.parent == hrf_root.parent == root
    val = open_dataset("mixed", root, "val", skip_unannotated=True)
    # median diameters of the trainval splits: DRIVE 540, STARE 649 (derived FOVs), HRF 3262 (23 annotated images)
    assert val.source_diameters == {"drive": 540.0, "stare": 649.0, "hrf": 3262.0}
    assert val.fov_diameter == round((540 * 649 * 3262) ** (1 / 3)) == 1046
    for name in ("drive", "stare", "hrf"):
        sample = val[next(index for index, item in enumerate(val.names) if item.startswith(f"{name}/"))]
        assert abs(fov_diameter(sample["fov"].numpy()) / val.fov_diameter - 1) < 0.02, name
