"""Issue 30, data side: a dataset folder that would train or score silently wrong is refused in one line naming
the file (and the split, stem or field).

* item 8: an image listed twice in one ``splits.json`` list (it was counted, trained and scored twice), and a
  ``trainval`` list that shares images with ``test``;
* item 14: a ``dataset.json`` mean or std that is not a finite number in [0, 1] (NaN normalised every image to
  NaN), duplicate class names, and an empty field-of-view mask (its image was scored Dice 1.0 on no pixel).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convunext.cli.main import main
from convunext.data import open_dataset

STEMS = ["a", "b", "c", "d", "e", "f"]  # without splits.json: test = [e], val = [f], train = a-d


def _folder(root: Path, size: int = 16) -> Path:
    """A folder dataset of RGB images and {0, 255} masks."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem in STEMS:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray((rng.random((size, size)) < 0.3).astype(np.uint8) * 255).save(root / "masks" / f"{stem}.png")
    return root


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect exit code 2, return its one error line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------------------------- item 8: splits
def test_an_image_listed_twice_in_one_split_is_refused_naming_file_split_and_stem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _folder(tmp_path / "data")
    splits = root / "splits.json"
    splits.write_text(json.dumps({"train": ["a", "b", "c", "d"], "test": ["e", "f", "e", "e"]}))
    err = _refused(["data", "info", "folder", str(root)], capsys)
    assert f"{splits}: split 'test' lists 'e' 3 times" in err
    for split in ("train", "test"):  # the file is refused whole: no split of it is used
        with pytest.raises(Exception, match="lists 'e' 3 times"):
            open_dataset("folder", root, split)


def test_a_trainval_list_sharing_images_with_test_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _folder(tmp_path / "data")
    (root / "splits.json").write_text(json.dumps({"trainval": ["a", "b", "c", "e"], "test": ["e", "f"]}))
    err = _refused(["data", "info", "folder", str(root)], capsys)
    assert f"{root / 'splits.json'}: 'e' is in both 'trainval' and 'test'" in err


def test_two_masks_for_one_image_are_refused_naming_both(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(root / "masks" / "e.tif")  # beside masks/e.png
    with pytest.raises(Exception, match=r"masks/e\.png and e\.tif: two files for 'e'; keep one of them"):
        open_dataset("folder", root, "test")  # test = [e]; the other splits do not need its mask


def test_images_whose_stems_differ_only_in_case_are_refused(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    shutil.copy(root / "images" / "a.png", root / "images" / "A.png")  # both would read masks/a.png
    with pytest.raises(Exception, match=r"A\.png: two images share the stem 'A' \(a\.png\)|a\.png: two images share"):
        open_dataset("folder", root, "test")


# ---------------------------------------------------------------------------------------- item 14: dataset.json
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"mean": [NaN, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}', "mean must be a list of 3 finite numbers"),
        ('{"mean": [0.5, 0.5, 0.5], "std": [0.25, Infinity, 0.25]}', "std must be a list of 3 finite numbers"),
        ('{"mean": [true, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}', "mean must be a list of 3 finite numbers"),
        ('{"mean": [123.7, 116.3, 103.5], "std": [58.4, 57.1, 57.4]}', "mean [123.7, 116.3, 103.5] is not in [0, 1]"),
        ('{"class_names": ["background", "vessel", "vessel"]}', "class_names lists 'vessel' twice"),
    ],
)
def test_dataset_json_values_that_would_train_wrong_are_refused_naming_the_file(
    text: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _folder(tmp_path / "data")
    (root / "dataset.json").write_text(text)
    err = _refused(["data", "info", "folder", str(root)], capsys)
    assert f"{root / 'dataset.json'}: {problem}" in err


def _fov(root: Path, empty: list[str]) -> None:
    """FOV masks for every image: all inside, except all outside for the stems in ``empty``."""
    (root / "fov").mkdir()
    for stem in STEMS:
        value = 0 if stem in empty else 255
        Image.fromarray(np.full((16, 16), value, dtype=np.uint8)).save(root / "fov" / f"{stem}.png")


def test_an_empty_field_of_view_is_refused_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _folder(tmp_path / "data")
    _fov(root, empty=["e"])  # the test image
    assert main(["data", "info", "folder", str(root), "--validate"]) == 2
    captured = capsys.readouterr()
    assert f"test: invalid ({root / 'fov' / 'e.png'}: empty field-of-view mask" in captured.out
    assert "validation failed for split 'test'" in captured.err
    with pytest.raises(Exception, match=r"e\.png: empty field-of-view mask"):
        open_dataset("folder", root, "test")[0]


def test_all_fields_of_view_empty_names_the_first_file_not_an_empty_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _folder(tmp_path / "data")
    _fov(root, empty=STEMS)
    err = _refused(["data", "info", "folder", str(root)], capsys)
    assert f"{root / 'fov' / 'a.png'}: empty field-of-view mask" in err
