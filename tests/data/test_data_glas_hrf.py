"""GlaS and HRF readers on miniatures of their distributed layouts, and on real copies when present."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from convunext.checkpoint import save_checkpoint
from convunext.cli.main import main
from convunext.data import dataset_info, detect_dataset, open_dataset
from convunext.data.base import load_split_file
from convunext.errors import ConvUNeXtError
from convunext.models import create_model


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


def test_hrf_unannotated_images_are_refused_by_name_and_split_unless_skipped(tmp_path, mini_hrf, capsys):
    copy = tmp_path / "HRF"
    shutil.copytree(mini_hrf, copy)
    for stem in ("12_h", "01_h", "03_h"):  # 12_h is a training image, 01_h and 03_h test images
        (copy / "manual1" / f"{stem}.tif").unlink()
    expected = (
        r"HRF/manual1: no vessel annotation for 12_h \(train\), 01_h, 03_h \(test\): this copy of HRF is incomplete"
    )
    for split in ("train", "val", "test"):  # whatever split is asked for: the user learns of every gap at once
        with pytest.raises(ConvUNeXtError, match=expected):
            open_dataset("hrf", copy, split, check_sizes=False)
    sizes = {split: len(open_dataset("hrf", copy, split, skip_unannotated=True)) for split in ("train", "val", "test")}
    assert sizes == {"train": 19, "val": 4, "test": 19}
    assert "going on without 3 unannotated image(s): 12_h (train), 01_h, 03_h (test)" in capsys.readouterr().err
    names = open_dataset("hrf", copy, "test", skip_unannotated=True).names
    assert "01_h" not in names and "04_h" in names


def test_hrf_undecodable_annotations_are_found_when_the_dataset_opens(tmp_path, mini_hrf, capsys):
    copy = tmp_path / "HRF"
    shutil.copytree(mini_hrf, copy)
    manual = copy / "manual1" / "04_h.tif"  # a test image
    manual.write_bytes(manual.read_bytes()[:20])  # truncated
    for split in ("train", "test"):  # before any training: not when the test split is first read
        with pytest.raises(ConvUNeXtError, match=r"an unreadable vessel annotation for 04_h \(test: .*04_h\.tif: "):
            open_dataset("hrf", copy, split, check_sizes=False)
    names = open_dataset("hrf", copy, "test", skip_unannotated=True).names
    assert "04_h" not in names and len(names) == 20
    assert "going on without 1 image(s): an unreadable vessel annotation for 04_h (test" in capsys.readouterr().err


def test_hrf_missing_image_is_not_taken_for_a_missing_annotation(tmp_path, mini_hrf):
    copy = tmp_path / "HRF"
    shutil.copytree(mini_hrf, copy)
    (copy / "images" / "01_h.jpg").unlink()
    (copy / "manual1" / "01_h.tif").unlink()
    with pytest.raises(ConvUNeXtError, match=r"images/01_h\.jpg: image not found \(HRF test split\)"):
        open_dataset("hrf", copy, "test", check_sizes=False, skip_unannotated=True)


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
    # the shared copy lacks the manual annotations of 11_h, 12_h and 13_h and its manual1/11_g.tif is truncated:
    # refused, named, unless the user opts out
    expected = r"no vessel annotation for 12_h \(train\), 11_h, 13_h \(test\); an unreadable one for 11_g \(test: "
    with pytest.raises(ConvUNeXtError, match=expected):
        open_dataset("hrf", hrf_root, "test")
    sizes = {
        split: len(open_dataset("hrf", hrf_root, split, check_sizes=True, skip_unannotated=True))
        for split in ("trainval", "test")
    }
    assert sizes == {"trainval": 23, "test": 18}
    dataset = open_dataset("hrf", hrf_root, "test", skip_unannotated=True)
    sample = dataset[0]
    assert sample["image"].shape == (3, 2336, 3504)
    assert set(np.unique(sample["mask"].numpy()).tolist()) == {0, 1}
    assert 0.5 < sample["fov"].numpy().mean() < 0.95


def test_evaluate_on_an_incomplete_hrf_copy_refuses_then_goes_on_when_told(tmp_path, mini_hrf, capsys):
    copy = tmp_path / "HRF"
    shutil.copytree(mini_hrf, copy)
    (copy / "manual1" / "01_h.tif").unlink()
    torch.manual_seed(0)
    meta = {
        "model": {"name": "unet", "kwargs": {"width": 4}},
        "classes": ["background", "vessel"],
        "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "data": {"name": "hrf"},
    }
    checkpoint = save_checkpoint(tmp_path / "run", "best", create_model("unet", width=4), meta)
    out = tmp_path / "report"
    argv = ["evaluate", str(checkpoint), str(copy), "--out", str(out), "--no-html", "--topology", "off"]
    assert main(argv) == 2
    assert "no vessel annotation for 01_h (test)" in capsys.readouterr().err and not out.exists()
    assert main([*argv, "--skip-unannotated"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["images"] == 20 and report["data_options"] == {"skip_unannotated": True}
