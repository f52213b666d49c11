"""Bad input is caught when loading, with a one-line ConvUNeXtError naming the file; nothing is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from convunext.data import open_dataset, read_fov, read_image, read_mask
from convunext.errors import ConvUNeXtError

STEMS = ["a", "b", "c", "d", "e", "f"]  # folder splits: test = [e], val = [f], train = a-d


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(ConvUNeXtError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def _open_all(root):
    """Open every split of a folder dataset and decode every item."""
    samples = []
    for split in ("train", "val", "test"):
        dataset = open_dataset("folder", root, split)
        samples += [dataset[i] for i in range(len(dataset))]
    return samples


def test_truncated_image(tmp_path, folder_factory, tree_snapshot):
    root = folder_factory(tmp_path / "ds", STEMS, height=40, width=40)
    path = root / "images" / "b.png"
    path.write_bytes(path.read_bytes()[:-200])
    before = tree_snapshot(root)
    message = _error(_open_all, root)
    assert str(path) in message and "cannot read image" in message
    assert tree_snapshot(root) == before


def test_unreadable_image(tmp_path, folder_factory):
    root = folder_factory(tmp_path / "ds", STEMS)
    path = root / "images" / "a.png"
    path.write_bytes(b"this is not a png")
    message = _error(_open_all, root)
    assert message.startswith(str(path)) and "cannot read image" in message


def test_image_and_mask_sizes_differ(tmp_path, folder_factory):
    root = folder_factory(tmp_path / "ds", STEMS, height=9, width=11)
    Image.fromarray(np.zeros((10, 11), np.uint8)).save(root / "masks" / "b.png")
    message = _error(_open_all, root)
    assert message == f"{root / 'masks' / 'b.png'}: size 11x10 does not match its image b.png (11x9)"


def test_image_without_mask(tmp_path, folder_factory):
    root = folder_factory(tmp_path / "ds", STEMS)
    (root / "masks" / "c.png").unlink()
    message = _error(_open_all, root)
    assert message == f"{root / 'images' / 'c.png'}: no mask (masks/c.* not found)"


@pytest.mark.parametrize("values", [(0, 128), (0, 1, 255), (0, 2)])
def test_binary_mask_with_other_values(tmp_path, folder_factory, values):
    root = folder_factory(tmp_path / "ds", STEMS)
    mask = np.zeros((9, 11), np.uint8)
    for i, value in enumerate(values):
        mask[i] = value
    Image.fromarray(mask).save(root / "masks" / "a.png")
    message = _error(_open_all, root)
    expected = "{" + ", ".join(str(v) for v in sorted(values)) + "}"
    assert message == f"{root / 'masks' / 'a.png'}: mask values {expected} are neither {{0, 255}} nor {{0, 1}} " + (
        "for a binary dataset"
    )


def test_declared_class_ids(tmp_path, folder_factory):
    root = folder_factory(tmp_path / "ds", STEMS)
    (root / "dataset.json").write_text(json.dumps({"class_names": ["background", "gland", "tumour"]}))
    mask = np.zeros((9, 11), np.uint8)
    mask[1], mask[2], mask[3] = 1, 2, 255
    Image.fromarray(mask).save(root / "masks" / "a.png")
    for stem in STEMS[1:]:
        Image.fromarray(np.minimum(mask, 1)).save(root / "masks" / f"{stem}.png")
    samples = _open_all(root)
    assert open_dataset("folder", root, "test").info.num_classes == 3
    masks = {sample["name"]: sample["mask"].numpy() for sample in samples}
    assert set(np.unique(masks["a"]).tolist()) == {0, 1, 2, 255}  # 255 = ignore
    mask[4] = 7
    Image.fromarray(mask).save(root / "masks" / "a.png")
    message = _error(_open_all, root)
    assert message == f"{root / 'masks' / 'a.png'}: mask values {{7}} are not class ids 0..2 (or 255 = ignore)"


def test_folder_without_images(tmp_path):
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "masks").mkdir()
    (tmp_path / "ds" / "images" / "notes.txt").write_text("no images here")
    message = _error(open_dataset, "folder", tmp_path / "ds", "train")
    assert message == f"{tmp_path / 'ds' / 'images'}: no images found (png, jpg, tif, bmp or gif)"
    message = _error(open_dataset, "folder", tmp_path, "train")
    assert message == f"{tmp_path}: no images/ folder (a folder dataset needs images/ and masks/)"
    message = _error(open_dataset, "folder", tmp_path / "missing", "train")
    assert "folder not found" in message


def test_missing_split(tmp_path, folder_factory):
    root = folder_factory(tmp_path / "ds", ["a", "b", "c"], splits={"train": ["a", "b"], "val": ["c"]})
    message = _error(open_dataset, "folder", root, "test")
    assert message == f"{root / 'splits.json'}: missing split 'test'"
    assert len(open_dataset("folder", root, "trainval")) == 3
    (root / "splits.json").write_text(json.dumps({"train": ["a", "b"], "val": ["b"], "test": ["c"]}))
    assert "'b' is in both 'train' and 'val'" in _error(open_dataset, "folder", root, "train")
    (root / "splits.json").write_text(json.dumps({"train": ["a", "zz"]}))
    assert "lists 'zz', which has no image" in _error(open_dataset, "folder", root, "train")
    (root / "splits.json").write_text("{not json")
    assert "invalid JSON" in _error(open_dataset, "folder", root, "train")


def test_unknown_names(tmp_path):
    assert "unknown dataset 'cityscapes'" in _error(open_dataset, "cityscapes", tmp_path, "train")
    assert "unknown split 'training'" in _error(open_dataset, "synthetic", None, "training")
    assert "unknown option 'colour'" in _error(open_dataset, "synthetic", None, "train", colour=True)
    assert "no DRIVE copy found" in _error(open_dataset, "drive", tmp_path, "train")


def test_mask_value_conventions(tmp_path):
    values = np.array([[0, 1], [1, 0]], np.uint8)
    Image.fromarray(values * 255).save(tmp_path / "l255.png")
    Image.fromarray(values).save(tmp_path / "l01.png")
    palette = Image.fromarray(values, mode="P")
    palette.putpalette([4, 2, 4, 252, 254, 252] + [0] * 762)  # DRIVE 2nd_manual: grey palette, indices 0/1
    palette.save(tmp_path / "p01.gif")
    Image.fromarray(np.repeat((values * 255)[..., None], 3, axis=2)).save(tmp_path / "rgb.png")
    for name in ("l255.png", "l01.png", "p01.gif", "rgb.png"):
        assert np.array_equal(read_mask(tmp_path / name), values), name
    assert np.array_equal(read_fov(tmp_path / "p01.gif"), values.astype(bool))
    Image.fromarray(np.dstack([values * 255, values * 0, values * 0])).save(tmp_path / "red.png")
    assert "mask is a colour image" in _error(read_mask, tmp_path / "red.png")
    assert "file not found" in _error(read_image, tmp_path / "absent.png")


def test_sixteen_bit_and_grey_images(tmp_path):
    array = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(array).save(tmp_path / "deep.png")
    image = read_image(tmp_path / "deep.png")
    assert image.shape == (3, 4, 1) and np.allclose(image[..., 0], array / 65535.0)
    Image.fromarray(np.full((3, 4), 51, np.uint8)).save(tmp_path / "grey.png")
    assert np.allclose(read_image(tmp_path / "grey.png", channels=3), 0.2)
