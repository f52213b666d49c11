"""``convunext data prepare``: folder and zip round trips, malicious zips, dataset.json, and the CLI."""

from __future__ import annotations

import json
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from convunext.cli.main import main
from convunext.data import open_dataset, prepare_dataset, safe_extract, verify_prepared
from convunext.errors import ConvUNeXtError


def _same_samples(name: str, source: Path, prepared: Path, splits=("train", "val", "test")) -> None:
    for split in splits:
        original = open_dataset(name, source, split)
        converted = open_dataset("folder", prepared, split)
        assert converted.names == original.names
        assert converted.info.class_names == original.info.class_names
        assert converted.info.has_fov == original.info.has_fov
        for index in range(len(original)):
            a, b = original[index], converted[index]
            assert torch.equal(a["image"], b["image"]), (split, a["name"])  # lossless
            assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["fov"], b["fov"])


def test_prepare_drive_folder_round_trip(tmp_path, mini_drive, tree_snapshot):
    before = tree_snapshot(mini_drive.parent)
    out = tmp_path / "drive-prepared"
    meta = prepare_dataset("drive", mini_drive, out, progress=False)
    assert tree_snapshot(mini_drive.parent) == before  # nothing written into the source
    assert meta["counts"] == {"train": 16, "val": 4, "test": 20, "trainval": 20}
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "fov", "images", "masks", "splits.json"]
    assert len(list((out / "images").glob("*.png"))) == 40
    stored = json.loads((out / "dataset.json").read_text())
    assert stored == meta and stored["class_names"] == ["background", "vessel"] and stored["has_fov"]
    assert len(stored["mean"]) == 3 and len(stored["std"]) == 3
    assert len(stored["files"]) == 40 * 3 + 1  # images, masks, fov and splits.json
    assert verify_prepared(out) == []
    _same_samples("drive", mini_drive, out)
    assert open_dataset("folder", out, "train").info.mean == tuple(stored["mean"])
    # tampering is detected
    (out / "masks" / "01_test.png").write_bytes(b"x")
    assert verify_prepared(out) == ["masks/01_test.png"]


def test_prepare_hrf_from_zip(tmp_path, mini_hrf):
    archive = tmp_path / "all.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(mini_hrf.rglob("*")):
            handle.write(path, path.relative_to(mini_hrf.parent).as_posix())
    out = tmp_path / "hrf-prepared"
    meta = prepare_dataset("hrf", archive, out, progress=False)
    assert meta["counts"] == {"train": 20, "val": 4, "test": 21, "trainval": 24}
    assert not (out / ".source").exists()  # the extracted copy is removed
    _same_samples("hrf", mini_hrf, out, splits=("val", "test"))


def test_prepare_glas_binarises_instances(tmp_path, mini_glas):
    out = tmp_path / "glas-prepared"
    meta = prepare_dataset("glas", mini_glas.parent, out, progress=False)
    assert meta["counts"] == {"train": 75, "val": 10, "test": 80, "trainval": 85}
    assert not (out / "fov").exists() and meta["has_fov"] is False
    _same_samples("glas", mini_glas, out, splits=("val",))


@pytest.mark.parametrize(
    "member",
    ["../escape.txt", "/tmp/absolute-escape.txt", "inner/../../escape.txt", "..\\escape.txt", "C:/escape.txt"],
)
def test_malicious_zip_is_refused(tmp_path, mini_drive, member):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(mini_drive.rglob("*.gif"))[:3]:
            handle.write(path, path.relative_to(mini_drive.parent).as_posix())
        handle.writestr(member, "gotcha")
    out = tmp_path / "work" / "out"
    with pytest.raises(ConvUNeXtError, match=r"evil\.zip: refusing member .*escape\.txt"):
        prepare_dataset("drive", archive, out, progress=False)
    assert not out.exists()  # nothing extracted, the output folder removed again
    assert not list(tmp_path.rglob("escape.txt")) and not Path("/tmp/absolute-escape.txt").exists()


def test_zip_with_symlink_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        info = zipfile.ZipInfo("DRIVE/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        handle.writestr(info, "/etc/passwd")
    with pytest.raises(ConvUNeXtError, match="symbolic link"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_prepare_refuses_a_non_empty_output(tmp_path, mini_drive):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConvUNeXtError, match="exists and is not empty"):
        prepare_dataset("drive", mini_drive, out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"


def test_failed_prepare_leaves_nothing(tmp_path, mini_drive):
    copy = tmp_path / "DRIVE"
    shutil.copytree(mini_drive, copy)
    (copy / "test" / "images" / "07_test.tif").write_bytes(b"broken")
    out = tmp_path / "out"
    with pytest.raises(ConvUNeXtError, match=r"07_test\.tif: cannot read image"):
        prepare_dataset("drive", copy, out, progress=False)
    assert not out.exists()


def test_prepare_a_user_folder(tmp_path, folder_factory):
    source = folder_factory(tmp_path / "mine", [f"case{i:02d}" for i in range(7)])
    out = tmp_path / "mine-prepared"
    meta = prepare_dataset("folder", source, out, progress=False)
    assert meta["name"] == "mine" and sum(meta["counts"][s] for s in ("train", "val", "test")) == 7
    _same_samples("folder", source, out)


def test_cli_prepare(tmp_path, mini_drive, capsys):
    out = tmp_path / "cli-out"
    code = main(["data", "prepare", "drive", str(mini_drive), str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "train 16, val 4, test 20" in captured.out and (out / "dataset.json").is_file()
    code = main(["data", "prepare", "drive", str(tmp_path / "missing"), str(tmp_path / "o2")])
    captured = capsys.readouterr()
    assert code == 2 and captured.err.strip().count("\n") == 0
    assert captured.err.startswith("convunext data: error:") and "missing: not found" in captured.err
    code = main(["data", "prepare", "drive", str(mini_drive), str(out)])
    assert code == 2 and "exists and is not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "prepare", "cityscapes", str(mini_drive), str(tmp_path / "o3")])
    assert "invalid choice" in capsys.readouterr().err


def test_cli_info(mini_glas, capsys):
    assert main(["data", "info", "glas", str(mini_glas), "--validate"]) == 0
    out = capsys.readouterr().out
    assert "train: 75 images (all decoded)" in out and "test: 80 images" in out and "classes: background, gland" in out
    assert main(["data", "info", "synthetic"]) == 0
    assert "val: 6 images" in capsys.readouterr().out


def test_cli_info_on_a_missing_folder(tmp_path, capsys):
    assert main(["data", "info", "folder", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convunext data: error:") and "absent" in err and err.count("\n") == 1
