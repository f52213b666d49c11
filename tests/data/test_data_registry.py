"""The dataset registry: every registered dataset is complete and consistent, and a dataset registered by a test
(a toy layout in one class and one registration) works end to end through open_dataset, dataset_info, detection,
data prepare and the CLI's choices."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convunext.cli.main import main
from convunext.cli.options import add_evaluation_data_arguments
from convunext.data import (
    SPLITS,
    DatasetInfo,
    DatasetSpec,
    FileDataset,
    Record,
    compute_mean_std,
    dataset_info,
    dataset_spec,
    detect_dataset,
    detectable_datasets,
    list_datasets,
    open_dataset,
    register_dataset,
    registry,
)
from convunext.data.base import check_split, load_split_file, locate_root, split_stems
from convunext.data.drive import DRIVE_INFO
from convunext.data.prepare import preparable_datasets
from convunext.errors import ConvUNeXtError
from convunext.training.config import list_presets

# ------------------------------------------------------------------------------------------------ a toy dataset
TOY_LAYOUT = "pictures/ and labels/ folders"
TOY_STEMS = [f"t{index}" for index in range(8)]


def is_toy_root(path: Path) -> bool:
    return (path / "pictures").is_dir() and (path / "labels").is_dir()


def toy_info(mean: tuple[float, ...] = (0.5, 0.5, 0.5), std: tuple[float, ...] = (0.25, 0.25, 0.25)) -> DatasetInfo:
    return DatasetInfo(name="toy", class_names=["background", "spot"], mean=mean, std=std)


class ToyDataset(FileDataset):
    """``TOY/pictures/tK.png`` + ``TOY/labels/tK.png``; test = t6, t7; val = t5; ``limit`` keeps the first images
    of a split (an option that changes the statistics)."""

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        info: DatasetInfo | None = None,
        check_sizes: bool = True,
        limit: int | None = None,
    ) -> None:
        check_split(split)
        root = locate_root(root, "TOY", is_toy_root, "TOY", TOY_LAYOUT)
        lists = {"trainval": TOY_STEMS[:6], "val": TOY_STEMS[5:6], "test": TOY_STEMS[6:]}
        stems = split_stems(lists, split)[:limit]
        records = [Record(stem, root / "pictures" / f"{stem}.png", root / "labels" / f"{stem}.png") for stem in stems]
        super().__init__(records, info or toy_info(), split, root, check_sizes=check_sizes)


TOY = DatasetSpec(
    name="toy",
    title="Toy",
    description="a toy layout registered by a test",
    reader=ToyDataset,
    info=toy_info,
    is_root=is_toy_root,
    folder_name="TOY",
    layout=TOY_LAYOUT,
    stats_reduce=1,
    stats_options=("limit",),
    locate_download=lambda source: locate_root(source, "TOY", is_toy_root, "TOY", TOY_LAYOUT),
)


def make_toy(root: Path) -> Path:
    """``root/TOY`` with 8 random 6x7 RGB pictures and {0, 255} labels; the pictures grow brighter with their
    number, so that statistics over different subsets differ."""
    rng = np.random.default_rng(0)
    toy = root / "TOY"
    (toy / "pictures").mkdir(parents=True)
    (toy / "labels").mkdir()
    for index, stem in enumerate(TOY_STEMS):
        picture = np.clip(rng.integers(0, 128, (6, 7, 3)) + 16 * index, 0, 255).astype(np.uint8)
        Image.fromarray(picture, mode="RGB").save(toy / "pictures" / f"{stem}.png")
        label = (rng.random((6, 7)) < 0.3).astype(np.uint8) * 255
        Image.fromarray(label, mode="L").save(toy / "labels" / f"{stem}.png")
    return toy


@contextmanager
def registered(spec: DatasetSpec) -> Iterator[DatasetSpec]:
    """``spec`` in the registry for the duration of the block; the registry as it was afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
        yield register_dataset(spec)


@pytest.fixture
def toy() -> Iterator[DatasetSpec]:
    with registered(TOY) as spec:
        yield spec


# ------------------------------------------------------------------------------------------------ the toy dataset
def test_a_registered_dataset_is_listed_and_gone_after_the_test(tmp_path):
    assert "toy" not in list_datasets()
    with registered(TOY):
        assert list_datasets()[-1] == "toy" and detectable_datasets()[-1] == "toy"
        assert preparable_datasets()[-1] == "toy" and dataset_spec("TOY") is TOY
    assert "toy" not in list_datasets()
    unknown = (
        "^unknown dataset 'toy'; expected one of synthetic, drive, glas, hrf, stare, chase_db1, mixed, folder, "
        "volumes, synthetic_ct$"
    )
    with pytest.raises(ConvUNeXtError, match=unknown):
        open_dataset("toy", tmp_path)


def test_a_toy_dataset_opens_with_computed_statistics_and_checked_options(tmp_path, toy):
    root = make_toy(tmp_path)
    train = open_dataset("TOY", tmp_path, "train")
    assert isinstance(train, ToyDataset) and train.root == root and train.names == TOY_STEMS[:5]
    assert [len(open_dataset("toy", root, split)) for split in SPLITS] == [5, 1, 2, 6]
    sample = train[0]
    assert sample["image"].shape == (3, 6, 7) and sample["mask"].shape == (6, 7) and sample["fov"].all()
    expected = compute_mean_std(ToyDataset(root, "trainval"))
    assert (train.info.mean, train.info.std) == expected and train.info.mean != toy_info().mean
    assert dataset_info("toy", tmp_path) == replace(toy_info(), mean=expected[0], std=expected[1])
    # a statistics option reaches the reader that computes them, and has its own cache entry
    limited = dataset_info("toy", root, limit=2)
    assert (limited.mean, limited.std) == compute_mean_std(ToyDataset(root, "trainval", limit=2)) != expected
    assert open_dataset("toy", root, "train", limit=2).info == limited
    assert dataset_info("toy", root, colour=True) == dataset_info("toy", root)  # options it does not take: ignored
    unknown = r"^dataset 'toy': unknown option 'colour' \(accepted: check_sizes, limit\)$"
    with pytest.raises(ConvUNeXtError, match=unknown):
        open_dataset("toy", root, "train", colour=True)
    with pytest.raises(ConvUNeXtError, match=r"no TOY copy found \(expected pictures/ and labels/ folders\)"):
        open_dataset("toy", tmp_path / "TOY" / "pictures", "train")


def test_a_toy_dataset_is_detected_below_a_root_but_an_own_layout_at_the_root_wins(
    tmp_path, toy, folder_factory, mini_drive
):
    make_toy(tmp_path / "download")
    assert detect_dataset(tmp_path / "download") == "toy"
    assert detect_dataset(tmp_path / "download" / "TOY") == "toy"
    mine = folder_factory(tmp_path / "mine", ["a", "b", "c"])
    make_toy(mine / "extra")
    shutil.copytree(mini_drive, mine / "extra" / "DRIVE")
    assert detect_dataset(mine / "extra") == "drive"  # registration order
    assert detect_dataset(mine) == "folder"  # a user's folder holding copies of public datasets is still theirs
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvUNeXtError) as error:
        detect_dataset(tmp_path / "empty")
    assert str(error.value) == (
        f"{tmp_path / 'empty'}: not a recognised dataset (expected DRIVE, GlaS, HRF, STARE, CHASE_DB1 or Toy as "
        "distributed, or images/ + masks/ or dataset.json with imagesTr/ and labelsTr/ (Decathlon, nnU-Net v2), or "
        "images/ + labels/ of NIfTI volumes); name it with --dataset"
    )


def test_a_toy_dataset_is_in_the_cli_choices(tmp_path, toy, capsys, monkeypatch):
    make_toy(tmp_path)
    assert main(["data", "info", "toy", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "dataset: toy" in out and "classes: background, spot" in out and "train: 5 images" in out
    monkeypatch.setenv("CONVUNEXT_DATA", str(tmp_path))  # no ROOT: its folder_name under the data root
    assert main(["data", "info", "toy", "--validate"]) == 0
    assert "test: 2 images (all decoded)" in capsys.readouterr().out
    parser = argparse.ArgumentParser()
    add_evaluation_data_arguments(parser)
    assert parser.parse_args([str(tmp_path), "--dataset", "toy"]).dataset == "toy"


def test_a_toy_dataset_is_listed_in_data_help(toy, capsys):
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    assert "  toy           a toy layout registered by a test\n" in capsys.readouterr().out


def test_a_toy_dataset_prepares_into_the_folder_layout(tmp_path, toy, capsys):
    make_toy(tmp_path / "download")
    out = tmp_path / "prepared"
    assert main(["data", "prepare", "toy", str(tmp_path / "download"), str(out), "--quiet"]) == 0
    assert "train on it with: convunext train --data folder" in capsys.readouterr().out  # no preset
    for split in SPLITS:
        original, converted = open_dataset("toy", tmp_path / "download", split), open_dataset("folder", out, split)
        assert converted.names == original.names and converted.info.class_names == ["background", "spot"]
        assert all(torch.equal(original[i]["image"], converted[i]["image"]) for i in range(len(original)))


def test_registering_a_taken_or_malformed_name_is_refused(toy):
    with pytest.raises(ValueError, match="dataset name 'toy' is already registered"):
        register_dataset(replace(TOY, description="another toy"))
    with pytest.raises(ValueError, match="dataset name 'drive' is already registered"):
        register_dataset(replace(TOY, name="drive"))
    with pytest.raises(ValueError, match="dataset name 'Toy2' must be lower case"):
        register_dataset(replace(TOY, name="Toy2"))
    with pytest.raises(ValueError, match="stats option 'colour' is not an argument of its reader"):
        register_dataset(replace(TOY, name="toy2", stats_options=("colour",)))
    with pytest.raises(ValueError, match="second-observer option 'observer' is not an argument of its reader"):
        register_dataset(replace(TOY, name="toy2", second_observer={"observer": 2}))
    assert list_datasets()[-1] == "toy" and dataset_spec("toy").description == "a toy layout registered by a test"


# ------------------------------------------------------------------------------------------------ every dataset
def test_the_built_in_datasets_in_order():
    assert list_datasets() == [
        *("synthetic", "drive", "glas", "hrf", "stare", "chase_db1", "mixed", "folder", "volumes", "synthetic_ct")
    ]
    assert detectable_datasets() == ["drive", "glas", "hrf", "stare", "chase_db1", "mixed", "folder", "volumes"]
    assert preparable_datasets() == ["drive", "glas", "hrf", "stare", "chase_db1", "folder", "volumes"]
    observers = {name: dataset_spec(name).second_observer for name in list_datasets()}
    assert {name: options for name, options in observers.items() if options} == {
        "drive": {"observer": 2},
        "stare": {"observer": "vk"},
        "chase_db1": {"observer": 2},
    }
    assert dataset_info("drive", observer=2, colour=True) is DRIVE_INFO  # options it does not need are ignored


@pytest.mark.parametrize("name", list_datasets())
def test_every_registered_dataset_is_described_consistently(name):
    spec = dataset_spec(name)
    assert spec.name == name == name.lower() and spec.title and "\n" not in spec.description
    assert spec.preset is None or spec.preset in list_presets()
    assert set(spec.stats_options) <= set(spec.options())
    assert set(spec.second_observer or ()) <= set(spec.options())
    assert spec.second_observer is None or spec.vessel_metrics  # scored inside the field of view
    assert spec.has_files or (spec.stats_reduce is None and spec.locate_download is None)
    assert spec.stats_reduce is None or spec.takes_info  # computed statistics reach the reader
    if spec.split_file is not None:
        lists = load_split_file(spec.split_file)
        assert set(lists["val"]) <= set(lists["trainval"]) and not set(lists["trainval"]) & set(lists["test"])


@pytest.fixture
def miniature(request, tmp_path, folder_factory):
    """``(search root, dataset folder)`` of a miniature copy of dataset ``request.param`` (tests/data/conftest.py);
    a dataset registered without one fails here: add its miniature."""
    name = request.param
    if name == "folder":
        root = folder_factory(tmp_path / "mine", [f"case{index:02d}" for index in range(7)])
        return root, root
    folder = request.getfixturevalue(f"mini_{name}")
    return (folder, folder) if dataset_spec(name).folder_name is None else (folder.parent, folder)


@pytest.mark.parametrize("miniature", detectable_datasets(), indirect=True)
def test_every_dataset_read_from_files_is_detected_and_opens_every_split(miniature, request):
    name = request.node.callspec.params["miniature"]
    search_root, folder = miniature
    spec = dataset_spec(name)
    assert (detect_dataset(search_root) == name) == spec.detected and spec.locate(search_root) == folder
    info = dataset_info(name, search_root)
    for split in SPLITS:
        dataset = open_dataset(name, search_root, split)
        assert dataset.info == info and len(dataset) > 0
        if spec.split_file is not None:
            assert dataset.names == split_stems(load_split_file(spec.split_file), split)


def test_a_generated_dataset_takes_no_root(capsys, tmp_path):
    assert not dataset_spec("synthetic").has_files and "synthetic" not in detectable_datasets()
    assert main(["data", "info", "synthetic", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "convunext data: error: the synthetic dataset takes no ROOT\n"
    with pytest.raises(ConvUNeXtError, match="^dataset 'folder' needs a root folder$"):
        dataset_info("folder")
