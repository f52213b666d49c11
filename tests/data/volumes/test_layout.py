"""Volume dataset layouts as distributed: the Decathlon, nnU-Net v2 raw, and a plain folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from convunext.data import detect_dataset
from convunext.data.volumes import read_layout, write_phantom_dataset
from convunext.errors import ConvUNeXtError


@pytest.fixture(scope="module")
def decathlon(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("msd") / "Task99_Phantom", cases=6, test_cases=1, seed=0)


def test_the_decathlon_layout_gives_classes_modality_cases_and_test_cases(decathlon: Path) -> None:
    layout = read_layout(decathlon)
    assert layout.kind == "decathlon"
    assert layout.class_names == ("background", "organ", "lesion")
    assert layout.modalities == ("CT",) and layout.is_ct == (True,)
    assert len(layout.cases) == 6 and all(case.label is not None for case in layout.cases)
    assert [case.label for case in layout.test_cases] == [None]
    assert detect_dataset(decathlon) == "volumes"


def test_the_real_hippocampus_sample_reads_as_a_decathlon_folder(hippocampus_root: Path) -> None:
    layout = read_layout(hippocampus_root)
    assert layout.kind == "decathlon"
    assert layout.class_names == ("background", "Anterior", "Posterior")
    assert layout.modalities == ("MRI",) and layout.is_ct == (False,)
    assert len(layout.cases) == 24
    assert layout.cases[0].name == "hippocampus_001"


def nnunet_copy(decathlon: Path, root: Path, channels: int = 1) -> Path:
    """The phantoms in nnU-Net v2's raw layout (``CASE_0000.nii.gz``, labels as ``{"name": value}``)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in read_layout(decathlon).cases:
        for channel in range(channels):
            shutil.copy(case.images[0], root / "imagesTr" / f"{case.name}_{channel:04d}.nii.gz")
        shutil.copy(case.label, root / "labelsTr" / f"{case.name}.nii.gz")
    meta = {
        "channel_names": {str(c): "CT" if c == 0 else "T2" for c in range(channels)},
        "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": 6,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_the_nnunet_layout_pairs_channel_files_and_labels(decathlon: Path, tmp_path: Path) -> None:
    layout = read_layout(nnunet_copy(decathlon, tmp_path / "Dataset099_Phantom", channels=2))
    assert layout.kind == "nnunet"
    assert layout.class_names == ("background", "organ", "lesion")
    assert layout.modalities == ("CT", "T2") and layout.is_ct == (True, False)
    assert len(layout.cases) == 6
    assert [path.name for path in layout.cases[0].images] == ["case_000_0000.nii.gz", "case_000_0001.nii.gz"]
    assert detect_dataset(tmp_path / "Dataset099_Phantom") == "volumes"


def test_an_nnunet_case_missing_a_channel_or_label_is_named(decathlon: Path, tmp_path: Path) -> None:
    root = nnunet_copy(decathlon, tmp_path / "d", channels=2)
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    with pytest.raises(ConvUNeXtError, match=r"case 'case_001' has channels \[0\]"):
        read_layout(root)
    root = nnunet_copy(decathlon, tmp_path / "e")
    (root / "labelsTr" / "case_002.nii.gz").unlink()
    with pytest.raises(ConvUNeXtError, match=r"case_002.nii.gz: label of case 'case_002' is missing"):
        read_layout(root)


def test_region_labels_and_gaps_in_class_values_are_refused(decathlon: Path, tmp_path: Path) -> None:
    root = nnunet_copy(decathlon, tmp_path / "f")
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "whole": [1, 2]}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ConvUNeXtError, match="region-based labels are not supported"):
        read_layout(root)
    meta["labels"] = {"background": 0, "organ": 2}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ConvUNeXtError, match=r"class values must be 0 .. 1 .* got \[0, 2\]"):
        read_layout(root)


def test_a_plain_folder_pairs_images_and_labels_by_name(decathlon: Path, tmp_path: Path) -> None:
    root = tmp_path / "plain"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    layout = read_layout(decathlon)
    for case in layout.cases[:5]:
        shutil.copy(case.images[0], root / "images" / case.images[0].name)
        shutil.copy(case.label, root / "labels" / case.label.name)
    shutil.copy(layout.cases[5].images[0], root / "images" / "unlabelled.nii.gz")
    plain = read_layout(root)
    assert plain.kind == "folder" and plain.class_names == ("background", "foreground")
    assert len(plain.cases) == 5 and [case.name for case in plain.test_cases] == ["unlabelled"]
    shutil.copy(layout.cases[0].label, root / "labels" / "orphan.nii.gz")
    with pytest.raises(ConvUNeXtError, match=r"orphan.nii.gz: label volume without an image"):
        read_layout(root)


def test_a_listed_file_that_is_missing_and_a_broken_dataset_json_are_named(decathlon: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(decathlon, root)
    (root / "labelsTr" / "case_003.nii.gz").unlink()
    with pytest.raises(ConvUNeXtError, match=r"dataset.json: label .*case_003.nii.gz is listed but missing"):
        read_layout(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(ConvUNeXtError, match=r"dataset.json: invalid JSON"):
        read_layout(root)
    with pytest.raises(ConvUNeXtError, match="no volume dataset"):
        read_layout(tmp_path)
