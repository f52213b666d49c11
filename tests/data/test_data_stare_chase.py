"""STARE and CHASE_DB1: the readers on the real STARE copy (``$CONVUNEXT_DATA/STARE``, else ``../shared/data/STARE``)
and on miniatures of both layouts; their fields of view, derived from the images; their splits; data prepare."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from convunext.cli.main import main
from convunext.data import (
    ChaseDb1Dataset,
    DatasetInfo,
    FileDataset,
    StareDataset,
    compute_mean_std,
    dataset_info,
    detect_dataset,
    open_dataset,
    prepare_dataset,
)
from convunext.data.base import Record, load_split_file, split_stems, vessel_info
from convunext.data.fov import derive_fov, fov_diameter
from convunext.data.io import read_image
from convunext.data.stare import stare_splits
from convunext.errors import ConvUNeXtError

STARE_IMAGES = load_split_file("stare")["trainval"] + load_split_file("stare")["test"]


# ------------------------------------------------------------------------------------------------ STARE, real copy
def test_real_stare_counts_and_splits(stare_root):
    sizes = {split: len(open_dataset("stare", stare_root, split)) for split in ("train", "val", "trainval", "test")}
    assert sizes == {"train": 8, "val": 2, "trainval": 10, "test": 10}
    assert open_dataset("stare", stare_root, "val").names == ["im0001", "im0044"]
    assert open_dataset("stare", stare_root, "trainval").names == STARE_IMAGES[:10]  # the first ten by number
    assert open_dataset("stare", stare_root, "test").names == STARE_IMAGES[10:]
    assert sorted(path.stem for path in (stare_root / "images").iterdir()) == STARE_IMAGES  # all 20, in number order
    assert len(open_dataset("stare", stare_root.parent, "val")) == 2  # a folder above STARE works too
    assert detect_dataset(stare_root) == "stare"


@pytest.mark.parametrize("split", ["trainval", "test"])
def test_real_stare_every_sample_with_its_derived_field_of_view(stare_root, split):
    dataset = open_dataset("stare", stare_root, split)
    assert dataset.info.has_fov and dataset.info.class_names == ["background", "vessel"]
    for index in range(len(dataset)):
        sample = dataset[index]
        image, mask, fov = sample["image"].numpy(), sample["mask"].numpy(), sample["fov"].numpy()
        assert image.shape == (3, 605, 700) and mask.shape == fov.shape == (605, 700) and fov.dtype == bool
        assert set(np.unique(mask).tolist()) == {0, 1} and 0.03 < mask.mean() < 0.2
        assert np.array_equal(fov, derive_fov(image.transpose(1, 2, 0)))  # derived from the image itself
        assert np.array_equal(dataset.read_arrays(index)[1], fov)  # statistics see the same FOV
        assert 0.7 < fov.mean() < 0.97 and 640 <= fov_diameter(fov) <= 700
        assert (mask.astype(bool) & ~fov).sum() < 0.01 * mask.sum()  # the vessels lie inside it


def test_real_stare_derived_fields_of_view_stay_off_the_frame(stare_root):
    for split in ("trainval", "test"):
        dataset = open_dataset("stare", stare_root, split)
        for index in range(len(dataset)):
            image, fov = dataset.read_arrays(index)
            assert (image[..., 0][fov] < 0.15).mean() < 0.01, dataset.names[index]  # the frame's red is under 0.12


def test_real_stare_both_observers(stare_root):
    for split in ("train", "test"):
        first = open_dataset("stare", stare_root, split)
        second = open_dataset("stare", stare_root, split, observer="vk")
        assert second.names == first.names and second.records[0].mask.name == f"{first.names[0]}.vk.ppm"
        dices = []
        for index in range(len(first)):
            a, b = first[index]["mask"].numpy(), second[index]["mask"].numpy()
            assert torch.equal(first[index]["fov"], second[index]["fov"])
            dices.append(2 * ((a == 1) & (b == 1)).sum() / ((a == 1).sum() + (b == 1).sum()))
        assert 0.6 < float(np.mean(dices)) < 0.85  # Hoover's and Kouznetsova's tracings differ widely


def test_real_stare_statistics_are_computed_from_the_training_images_inside_the_derived_fov(stare_root):
    info = dataset_info("stare", stare_root)
    assert (info.mean, info.std) == compute_mean_std(StareDataset(stare_root, "trainval"))
    assert open_dataset("stare", stare_root, "test").info == info
    fold = dataset_info("stare", stare_root, fold=0)  # leave-one-out: 19 other training images
    assert (
        (fold.mean, fold.std) == compute_mean_std(StareDataset(stare_root, "trainval", fold=0)) != (info.mean, info.std)
    )


def test_real_stare_data_info_validates(stare_root, capsys):
    assert main(["data", "info", "stare", str(stare_root.parent), "--validate"]) == 0
    out = capsys.readouterr().out
    assert "FOV: True" in out and "train: 8 images (all decoded)" in out and "test: 10 images (all decoded)" in out


# ------------------------------------------------------------------------------------------------ STARE, splits
@pytest.mark.parametrize("fold", [0, 7, 19])
def test_stare_leave_one_out(mini_stare, fold):
    test = open_dataset("stare", mini_stare, "test", fold=fold)
    trainval = open_dataset("stare", mini_stare, "trainval", fold=fold)
    val = open_dataset("stare", mini_stare, "val", fold=fold)
    train = open_dataset("stare", mini_stare, "train", fold=fold)
    assert test.names == [STARE_IMAGES[fold]]
    assert trainval.names == [name for name in STARE_IMAGES if name != STARE_IMAGES[fold]]
    assert val.names == trainval.names[0::5] and len(val) == 4  # every fifth of the 19, from the first
    assert train.names == [name for name in trainval.names if name not in val.names] and len(train) == 15


def test_stare_shipped_split_follows_its_rule():
    lists = load_split_file("stare")
    assert lists["trainval"] == STARE_IMAGES[:10] and lists["val"] == lists["trainval"][::5]
    assert stare_splits() == lists


@pytest.mark.parametrize("fold", [20, -1, 2.0, "3", True])
def test_stare_fold_out_of_range_is_one_line(mini_stare, fold):
    with pytest.raises(ConvUNeXtError) as error:
        open_dataset("stare", mini_stare, "test", fold=fold)
    assert str(error.value) == f"STARE: fold must be an integer from 0 to 19 (leave-one-out), got {fold!r}"


# ------------------------------------------------------------------------------------------------ STARE, miniature
def test_mini_stare_reads_both_observers_with_the_drawn_disc_as_field_of_view(mini_stare):
    lists = load_split_file("stare")
    dataset = open_dataset("stare", mini_stare, "test", observer="vk")
    assert isinstance(dataset, StareDataset) and dataset.names == lists["test"] and dataset.observer == "vk"
    rows, cols = np.mgrid[0:16, 0:18]
    drawn = (rows - 7.5) ** 2 + (cols - 8.5) ** 2 <= 8**2  # the miniature's disc (tests/data/conftest.py)
    for index in range(len(dataset)):
        sample = dataset[index]
        assert torch.equal(sample["fov"], torch.from_numpy(drawn))
        vk = np.asarray(Image.open(mini_stare / "labels-vk" / f"{sample['name']}.vk.ppm")) > 0
        assert np.array_equal(sample["mask"].numpy(), vk.astype(np.int64))
    with pytest.raises(ConvUNeXtError, match=r"^STARE: observer must be 'ah' or 'vk', got 'xx'$"):
        open_dataset("stare", mini_stare, "test", observer="xx")


def test_mini_stare_missing_files_are_named(tmp_path, mini_stare):
    copy = tmp_path / "STARE"
    shutil.copytree(mini_stare, copy)
    (copy / "labels-vk" / "im0240.vk.ppm").unlink()
    assert len(open_dataset("stare", copy, "test")) == 10  # the ground truth is complete
    with pytest.raises(ConvUNeXtError) as error:
        open_dataset("stare", copy, "test", observer="vk")
    assert (
        str(error.value)
        == f"{copy / 'images' / 'im0240.ppm'}: no vessel mask ({copy / 'labels-vk' / 'im0240.vk.ppm'} not found)"
    )
    image = copy / "images" / "im0002.ppm"
    image.rename(copy / "images" / "im0002.ppm.gz")  # as downloaded: the files come gzipped
    with pytest.raises(ConvUNeXtError) as error:
        open_dataset("stare", copy, "train")
    assert (
        str(error.value) == f"{image}: image not found (STARE train split; found im0002.ppm.gz: gunzip the STARE files)"
    )
    assert len(open_dataset("stare", copy, "test")) == 10


def test_an_image_without_a_field_of_view_is_named(tmp_path, mini_stare):
    copy = tmp_path / "STARE"
    shutil.copytree(mini_stare, copy)
    image = copy / "images" / "im0162.ppm"
    Image.new("RGB", (18, 16)).save(image)  # black: no disc to find
    dataset = open_dataset("stare", copy, "test", check_sizes=False)
    message = (
        f"^{image}: no field of view found: no region of the red channel is brighter than 0.078 "
        r"\(is it a fundus photograph\?\)$"
    )
    with pytest.raises(ConvUNeXtError, match=message):
        dataset[0]
    with pytest.raises(ConvUNeXtError, match=message):
        dataset.read_arrays(0, reduce=2)


def test_a_derived_field_of_view_is_subsampled_from_the_full_size_one(mini_stare):
    dataset = open_dataset("stare", mini_stare, "trainval")
    image, fov = dataset.read_arrays(3, reduce=2)
    full_image, full_fov = dataset.read_arrays(3)
    assert np.array_equal(image, full_image[::2, ::2]) and np.array_equal(fov, full_fov[::2, ::2])


def test_derived_fov_is_only_for_datasets_with_a_field_of_view_and_no_masks(mini_stare):
    record = Record("im0001", mini_stare / "images" / "im0001.ppm", mini_stare / "labels-ah" / "im0001.ah.ppm")
    info = vessel_info("stare")
    assert FileDataset([record], info, "train", mini_stare, derived_fov=True).derived_fov
    with pytest.raises(ValueError, match="derived_fov is for datasets with a field of view"):
        FileDataset([record], DatasetInfo(name="no fov"), "train", mini_stare, derived_fov=True)
    with pytest.raises(ValueError, match="that ship no FOV masks"):
        FileDataset([Record("a", record.image, record.mask, record.mask)], info, "train", mini_stare, derived_fov=True)


def test_prepare_stare_writes_the_derived_fields_of_view(tmp_path, mini_stare):
    out = tmp_path / "prepared"
    meta = prepare_dataset("stare", mini_stare.parent, out, progress=False)
    assert meta["has_fov"] and meta["counts"] == {"train": 8, "val": 2, "test": 10, "trainval": 10}
    for split in ("train", "val", "test"):
        original, prepared = open_dataset("stare", mini_stare, split), open_dataset("folder", out, split)
        assert prepared.names == original.names
        for index in range(len(original)):
            assert torch.equal(prepared[index]["fov"], original[index]["fov"])
            assert torch.equal(prepared[index]["mask"], original[index]["mask"])
    mean, std = compute_mean_std(StareDataset(mini_stare, "trainval"))
    assert (meta["mean"], meta["std"]) == (list(mean), list(std))  # inside the same fields of view


# ------------------------------------------------------------------------------------------------ CHASE_DB1
def test_mini_chase_db1_splits_and_observers(mini_chase_db1):
    lists = load_split_file("chase_db1")
    sizes = {
        split: len(open_dataset("chase_db1", mini_chase_db1, split)) for split in ("train", "val", "trainval", "test")
    }
    assert sizes == {"train": 16, "val": 4, "trainval": 20, "test": 8}
    assert open_dataset("chase_db1", mini_chase_db1, "val").names == [
        "Image_05L",
        "Image_05R",
        "Image_10L",
        "Image_10R",
    ]
    assert open_dataset("chase_db1", mini_chase_db1, "test").names == [
        f"Image_{child}{eye}" for child in (11, 12, 13, 14) for eye in "LR"
    ]
    assert split_stems(lists, "trainval") == [f"Image_{child:02d}{eye}" for child in range(1, 11) for eye in "LR"]
    for observer, suffix in ((1, "1stHO"), (2, "2ndHO")):
        dataset = open_dataset("chase_db1", mini_chase_db1, "train", observer=observer)
        assert isinstance(dataset, ChaseDb1Dataset) and dataset.info.has_fov
        sample = dataset[0]
        stored = np.asarray(Image.open(mini_chase_db1 / f"{sample['name']}_{suffix}.png")) > 0
        assert np.array_equal(sample["mask"].numpy(), stored.astype(np.int64))
        assert torch.equal(sample["fov"], torch.from_numpy(derive_fov(read_image(dataset.records[0].image))))
    with pytest.raises(ConvUNeXtError, match=r"^CHASE_DB1: observer must be 1 or 2, got 3$"):
        open_dataset("chase_db1", mini_chase_db1, "test", observer=3)


def test_mini_chase_db1_derived_fields_of_view_are_the_drawn_discs(mini_chase_db1):
    rows, cols = np.mgrid[0:18, 0:16]
    drawn = (rows - 8.5) ** 2 + (cols - 7.5) ** 2 <= 8**2  # the miniature's disc, under JPEG's ringing
    dataset = open_dataset("chase_db1", mini_chase_db1, "trainval")
    for index in range(len(dataset)):
        fov = dataset[index]["fov"].numpy()
        assert (fov ^ drawn).sum() <= 6  # a pixel or two of the rim
    info = dataset_info("chase_db1", mini_chase_db1)
    assert (info.mean, info.std) == compute_mean_std(ChaseDb1Dataset(mini_chase_db1, "trainval"))


@pytest.mark.parametrize("observer, suffix", [(1, "1stHO"), (2, "2ndHO")])
def test_mini_chase_db1_missing_mask_is_named(tmp_path, mini_chase_db1, observer, suffix):
    copy = tmp_path / "CHASE_DB1"
    shutil.copytree(mini_chase_db1, copy)
    (copy / f"Image_12R_{suffix}.png").unlink()
    with pytest.raises(ConvUNeXtError) as error:
        open_dataset("chase_db1", copy, "test", observer=observer)
    assert (
        str(error.value) == f"{copy / 'Image_12R.jpg'}: no vessel mask ({copy / f'Image_12R_{suffix}.png'} not found)"
    )
    assert len(open_dataset("chase_db1", copy, "test", observer=3 - observer)) == 8  # the other observer is whole
    (copy / "Image_01L.jpg").unlink()
    with pytest.raises(ConvUNeXtError, match=r"Image_01L.jpg: image not found \(CHASE_DB1 trainval split\)$"):
        open_dataset("chase_db1", copy, "trainval", observer=observer)


def test_chase_db1_is_found_under_either_folder_name(tmp_path, mini_chase_db1):
    official = tmp_path / "download" / "CHASEDB1"  # the name the official zip unpacks to
    shutil.copytree(mini_chase_db1, official)
    for root in (tmp_path / "download", official, tmp_path):
        assert open_dataset("chase_db1", root, "test").root == official
    assert detect_dataset(tmp_path / "download") == "chase_db1"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvUNeXtError) as error:
        open_dataset("chase_db1", tmp_path / "empty", "test")
    assert str(error.value) == (
        f"{tmp_path / 'empty'}: no CHASE_DB1 copy found (expected Image_01L.jpg ... Image_14R.jpg with their "
        "_1stHO.png and _2ndHO.png masks in one folder)"
    )


def test_prepare_chase_db1_from_the_official_zip(tmp_path, mini_chase_db1):
    archive = tmp_path / "CHASEDB1.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(mini_chase_db1.iterdir()):
            handle.write(path, f"CHASEDB1/{path.name}")
    out = tmp_path / "prepared"
    meta = prepare_dataset("chase_db1", archive, out, progress=False)
    assert meta["has_fov"] and meta["counts"] == {"train": 16, "val": 4, "test": 8, "trainval": 20}
    original, prepared = open_dataset("chase_db1", mini_chase_db1, "test"), open_dataset("folder", out, "test")
    assert prepared.names == original.names
    assert all(torch.equal(prepared[i]["fov"], original[i]["fov"]) for i in range(len(original)))
