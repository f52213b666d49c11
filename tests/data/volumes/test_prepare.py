"""``convunext data prepare volumes``: a Decathlon task (folder or tar, 4D multi-modal included) into nnU-Net v2's
raw layout, every case checked, nothing left behind on a bad case."""

from __future__ import annotations

import filecmp
import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from convunext.cli.main import main
from convunext.data import prepare_dataset, verify_prepared
from convunext.data.volumes import VolumeSliceDataset, case_split, read_layout, read_volume, write_phantom_dataset
from convunext.errors import ConvUNeXtError


@pytest.fixture(scope="module")
def decathlon(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("msd") / "Task99_Phantom", cases=6, test_cases=1, seed=0)


def _tar_of(folder: Path, archive: Path, extra: dict[str, bytes] | None = None) -> Path:
    """``folder`` as a tar (``folder.name/...`` inside, as the Decathlon's), with ``extra`` members added."""
    with tarfile.open(archive, "w") as handle:
        handle.add(folder, arcname=folder.name)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            handle.addfile(info, io.BytesIO(data))
    return archive


def test_a_decathlon_tar_becomes_an_nnunet_folder_with_the_same_voxels_geometry_and_splits(
    decathlon: Path, tmp_path: Path
) -> None:
    # the Decathlon's tars hold macOS resource forks beside the volumes: they must not be read as cases
    archive = _tar_of(decathlon, tmp_path / "Task99_Phantom.tar", {"Task99_Phantom/imagesTr/._case_000.nii.gz": b"\0"})
    out = tmp_path / "prepared"
    meta = prepare_dataset("volumes", archive, out, progress=False)

    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, "organ": 1, "lesion": 2} and meta["numTraining"] == 6
    assert meta["source"] == "Task99_Phantom.tar" and meta["source_layout"] == "decathlon"
    assert meta["counts"] == {"train": 4, "val": 1, "test": 1, "unlabelled": 1}
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["case_006_0000.nii.gz"]
    assert not (out / ".source").exists() and verify_prepared(out) == []
    assert json.loads((out / "dataset.json").read_text()) == meta

    source, prepared = read_layout(decathlon), read_layout(out)
    assert prepared.kind == "nnunet" and prepared.class_names == source.class_names
    assert [case.name for case in prepared.cases] == [case.name for case in source.cases]
    for before, after in zip(source.cases, prepared.cases):
        assert filecmp.cmp(before.images[0], after.images[0], shallow=False)
        assert filecmp.cmp(before.label, after.label, shallow=False)
    for split in ("train", "val", "test"):
        assert [c.name for c in case_split(prepared, split)] == [c.name for c in case_split(source, split)]
    assert len(VolumeSliceDataset(out, "train")) == len(VolumeSliceDataset(decathlon, "train"))


def _multimodal(root: Path, decathlon: Path) -> Path:
    """The phantoms as a two-modality Decathlon task (one ``I x J x K x 2`` file per case, like BraTS): channel 0
    the phantom, channel 1 its negative, stored as int16."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    meta = json.loads((decathlon / "dataset.json").read_text())
    meta["modality"] = {"0": "FLAIR", "1": "T1w"}
    meta["test"] = []
    for entry in meta["training"]:
        image = nib.load(decathlon / entry["image"])
        data = np.asarray(image.dataobj).astype(np.int16)
        packed = nib.Nifti1Image(np.stack([data, -data], axis=-1), image.affine, header=image.header)
        packed.set_data_dtype(np.int16)
        nib.save(packed, root / entry["image"])
        shutil.copy(decathlon / entry["label"], root / entry["label"])
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_a_multimodal_decathlon_task_is_split_into_one_file_per_channel(decathlon: Path, tmp_path: Path) -> None:
    source = _multimodal(tmp_path / "Task98_TwoChannels", decathlon)
    with pytest.raises(ConvUNeXtError, match=r"2 modalities in one 4D file per case; convert .*data prepare volumes"):
        read_layout(source)
    out = tmp_path / "prepared"
    meta = prepare_dataset("volumes", source, out, progress=False)
    assert meta["channel_names"] == {"0": "FLAIR", "1": "T1w"}
    layout = read_layout(out)
    assert layout.modalities == ("FLAIR", "T1w") and len(layout.cases) == 6
    packed = nib.load(source / "imagesTr" / "case_002.nii.gz")
    first, second = (read_volume(out / "imagesTr" / f"case_002_{c:04d}.nii.gz") for c in (0, 1))
    np.testing.assert_array_equal(first.array, np.asarray(packed.dataobj)[..., 0])
    np.testing.assert_array_equal(second.array, -first.array)
    np.testing.assert_allclose(first.affine, packed.affine)
    np.testing.assert_allclose(second.affine, packed.affine)
    assert nib.load(out / "imagesTr" / "case_002_0001.nii.gz").get_data_dtype() == np.int16
    dataset = VolumeSliceDataset(out, "train")
    assert dataset[0]["image"].shape[0] == 2


def test_a_bad_case_stops_the_prepare_naming_the_source_file_and_leaves_nothing(
    decathlon: Path, tmp_path: Path
) -> None:
    source = tmp_path / "Task99_Phantom"
    shutil.copytree(decathlon, source)
    label = read_volume(source / "labelsTr" / "case_003.nii.gz", label=True)
    broken = label.array.copy()
    broken[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(broken, label.affine), source / "labelsTr" / "case_003.nii.gz")
    out = tmp_path / "out"
    with pytest.raises(ConvUNeXtError, match=r"Task99_Phantom/labelsTr/case_003.nii.gz: label value 7 outside"):
        prepare_dataset("volumes", source, out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Task99_Phantom"]

    packed = _multimodal(tmp_path / "Task98", decathlon)
    image = nib.load(packed / "imagesTr" / "case_001.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[..., :1], image.affine), packed / "imagesTr" / "case_001.nii.gz")
    with pytest.raises(ConvUNeXtError, match=r"case_001.nii.gz: shape \d+x\d+x\d+x1; dataset.json names 2 modalities"):
        prepare_dataset("volumes", packed, out, progress=False)
    assert not out.exists()


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ("../escape.nii.gz", "path with '..'"),
        ("/etc/escape.nii.gz", "absolute path"),
        ("Task/../../escape.nii.gz", "path with '..'"),
        ("..\\escape.nii.gz", "path with '..'"),  # made on Windows
        ("C:/escape.nii.gz", "absolute path"),
    ],
)
def test_a_tar_member_outside_the_output_is_refused(tmp_path: Path, member: str, reason: str) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as handle:
        info = tarfile.TarInfo(member)
        info.size = 1
        handle.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ConvUNeXtError, match=rf"evil\.tar: refusing member .*escape\.nii\.gz' \({re.escape(reason)}\)"):
        prepare_dataset("volumes", archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.nii.gz").exists()


def test_a_tar_with_a_link_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as handle:
        info = tarfile.TarInfo("Task/imagesTr/case.nii.gz")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        handle.addfile(info)
    with pytest.raises(ConvUNeXtError, match=r"link\.tar: refusing member 'Task/imagesTr/case.nii.gz' \(link"):
        prepare_dataset("volumes", archive, tmp_path / "out", progress=False)


def test_the_real_hippocampus_sample_prepares_unchanged(hippocampus_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "Dataset004_Hippocampus"
    meta = prepare_dataset("volumes", hippocampus_root, out, progress=False)
    assert meta["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2} and meta["numTraining"] == 24
    assert meta["counts"] == {"train": 16, "val": 4, "test": 4, "unlabelled": 0}
    assert filecmp.cmp(
        hippocampus_root / "imagesTr" / "hippocampus_001.nii.gz",
        out / "imagesTr" / "hippocampus_001_0000.nii.gz",
        shallow=False,
    )


def test_cli_prepare_volumes(decathlon: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["data", "prepare", "volumes", str(decathlon), str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "volumes: train 4, val 1, test 1; 1 unlabelled" in printed
    assert "classes: background, organ, lesion; channels: CT" in printed
    assert f"convunext train volumes --data-root {out}" in printed
    assert main(["data", "prepare", "volumes", str(tmp_path / "nothing.tar"), str(tmp_path / "o")]) == 2
    assert "nothing.tar: not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["data", "prepare", "volumes", str(tmp_path / "empty"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "empty: no volume dataset found" in err and err.count("\n") == 1


def test_an_archive_that_is_not_one_or_is_truncated_is_one_line(decathlon: Path, tmp_path: Path) -> None:
    fake = tmp_path / "Task.tar"
    fake.write_bytes(b"not an archive at all" * 40)
    with pytest.raises(ConvUNeXtError, match=r"Task.tar: not a folder, a .zip or a .tar file$"):
        prepare_dataset("volumes", fake, tmp_path / "out", progress=False)
    packed = tmp_path / "Task99.tar.gz"
    with tarfile.open(packed, "w:gz") as handle:
        handle.add(decathlon, arcname=decathlon.name)
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    with pytest.raises(ConvUNeXtError) as caught:
        prepare_dataset("volumes", truncated, tmp_path / "out", progress=False)
    assert str(caught.value).startswith(f"{truncated}: ") and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()
    meta = prepare_dataset("volumes", packed, tmp_path / "from-gz", progress=False)  # the whole one works
    assert meta["numTraining"] == 6


def test_a_tar_made_on_windows_unpacks_into_folders(decathlon: Path, tmp_path: Path) -> None:
    archive = tmp_path / "windows.tar"
    with tarfile.open(archive, "w") as handle:
        for path in sorted(decathlon.rglob("*")):
            if path.is_file():
                handle.add(path, arcname="Task99_Phantom\\" + "\\".join(path.relative_to(decathlon).parts))
    meta = prepare_dataset("volumes", archive, tmp_path / "out", progress=False)
    assert meta["numTraining"] == 6 and meta["source_layout"] == "decathlon"


def test_an_nnunet_folder_prepares_as_it_is_and_two_datasets_are_refused(decathlon: Path, tmp_path: Path) -> None:
    source = tmp_path / "raw" / "Dataset099_Phantom"
    (source / "imagesTr").mkdir(parents=True)
    (source / "labelsTr").mkdir()
    for case in read_layout(decathlon).cases:
        for channel in range(2):
            shutil.copy(case.images[0], source / "imagesTr" / f"{case.name}_{channel:04d}.nii.gz")
        shutil.copy(case.label, source / "labelsTr" / f"{case.name}.nii.gz")
    labels = {"background": 0, "organ": 1, "lesion": 2}
    meta = {"channel_names": {"0": "CT", "1": "T2"}, "labels": labels, "file_ending": ".nii.gz", "numTraining": 6}
    (source / "dataset.json").write_text(json.dumps(meta))
    prepared = prepare_dataset("volumes", tmp_path / "raw", tmp_path / "out", progress=False)  # found one level down
    assert prepared["source_layout"] == "nnunet" and prepared["channel_names"] == {"0": "CT", "1": "T2"}
    assert filecmp.cmp(
        source / "imagesTr" / "case_000_0001.nii.gz", tmp_path / "out" / "imagesTr" / "case_000_0001.nii.gz"
    )
    shutil.copytree(decathlon, tmp_path / "raw" / "Task99_Phantom")
    with pytest.raises(ConvUNeXtError, match=r"raw: holds several volume datasets \(Dataset099_Phantom, Task99_Phan"):
        prepare_dataset("volumes", tmp_path / "raw", tmp_path / "out2", progress=False)
