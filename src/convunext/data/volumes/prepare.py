"""``convunext data prepare volumes SOURCE OUT``: a volume dataset as it is downloaded, checked volume by volume and
written in nnU-Net v2's raw layout.

SOURCE is a Medical Segmentation Decathlon task (its folder, or the ``.tar`` it is distributed as), an nnU-Net v2
raw folder or a plain ``images/`` + ``labels/`` folder (:mod:`~convunext.data.volumes.layout`), at SOURCE or one
or two folder levels below it. OUT receives:

* ``imagesTr/CASE_0000.nii.gz`` (one file per channel: the Decathlon's multi-modal 4D images, such as BraTS's four
  MR sequences, are split along their 4th axis, each channel keeping the file's affine and header),
  ``labelsTr/CASE.nii.gz`` and, for unlabelled cases, ``imagesTs/CASE_0000.nii.gz``. A ``.nii.gz`` file is copied
  byte for byte, a ``.nii`` one gzip-compressed as it is: no voxel, affine or header field changes.
* ``splits.json``: the train / val / test cases (the source's ``splits.json`` if it has one, else every fifth case
  by name for test, every fifth of the rest for validation), so OUT is trained on exactly the cases the source was.
* ``dataset.json``: nnU-Net v2's (``channel_names``, ``labels`` as ``{"name": value}``, ``numTraining``,
  ``file_ending``), which nnU-Net reads as it is, plus convunext's ``format_version``, ``created_by``, ``source``,
  ``counts`` and the sha256 of every file (:func:`~convunext.data.verify_prepared` compares them).

Every case is read as training reads it (:func:`~convunext.data.volumes.read_case`) before it is written: each
channel and the label must have the image's shape and affine, the labels must be whole numbers within the declared
classes, the images finite. The first problem stops the conversion with one line naming the source file, and
nothing is left in OUT (:func:`~convunext.data.prepare_dataset`). Hidden files (the macOS ``._CASE.nii.gz`` forks
inside the Decathlon's tars) are not volumes and are left out.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from ...errors import ConvUNeXtError, error_text
from ..folder import folder_splits
from ..prepare import FORMAT_VERSION, created_by, file_digests
from .cases import read_case, read_label_on
from .layout import VolumeCase, VolumeLayout, is_volume_root, read_layout
from .nifti import NIFTI_READ_ERRORS, encode_nifti

__all__ = ["locate_volume_root", "prepare_volumes"]

FILE_ENDING = ".nii.gz"


def locate_volume_root(source: Path) -> Path:
    """The folder holding a volume layout: ``source`` itself, or the one such folder one or two levels below it
    (a Decathlon tar holds ``Task04_Hippocampus/``).

    Raises:
        ConvUNeXtError: none, or several (naming two).
    """
    if is_volume_root(source):
        return source
    found: list[Path] = []
    level = [source]
    for _ in range(2):
        level = [child for folder in level for child in sorted(folder.iterdir()) if _visible_folder(child)]
        found = [folder for folder in level if is_volume_root(folder)]
        if found:
            break
    if not found:
        raise ConvUNeXtError(
            f"{source}: no volume dataset found (expected dataset.json with imagesTr/ as the Decathlon and nnU-Net "
            "distribute them, or images/ and labels/ holding NIfTI volumes)"
        )
    if len(found) > 1:
        raise ConvUNeXtError(f"{source}: holds several volume datasets ({found[0].name}, {found[1].name}); give one")
    return found[0]


def _visible_folder(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".")


def _copy_gzipped(source: Path, target: Path) -> None:
    """``source`` (``.nii`` or ``.nii.gz``) as ``target`` (``.nii.gz``), byte for byte once decompressed."""
    if source.name.lower().endswith(".gz"):
        shutil.copyfile(source, target)
        return
    with open(source, "rb") as raw, gzip.open(target, "wb", compresslevel=1) as sink:
        shutil.copyfileobj(raw, sink)


def _split_packed(source: Path, channels: int, targets: list[Path]) -> tuple[tuple[int, ...], np.ndarray]:
    """Write the channels of a 4D Decathlon image (``I x J x K x channels``) as 3D files ``targets``, each with the
    source's affine and header (the values as stored, scaled to float32 where the file sets a scale); return the
    image's 3D shape and affine."""
    try:
        image = nib.load(source)
        shape = image.shape
        if len(shape) != 4 or shape[3] != channels:
            raise ConvUNeXtError(
                f"{source}: shape {'x'.join(map(str, shape))}; dataset.json names {channels} modalities, expected "
                f"I x J x K x {channels}"
            )
        data = np.asanyarray(image.dataobj)  # decompressed once, not once per channel
        for channel, target in enumerate(targets):
            array = data[..., channel]
            if not np.isfinite(array).all():
                raise ConvUNeXtError(f"{source}: channel {channel} holds NaN or infinite voxels")
            target.write_bytes(encode_nifti(array, image.affine, image.header, dtype=array.dtype))
    except NIFTI_READ_ERRORS as error:
        raise ConvUNeXtError(f"{source}: cannot read NIfTI file ({error_text(error)})") from None
    return tuple(shape[:3]), image.affine


def _write_case(
    layout: VolumeLayout, case: VolumeCase, images: Path, labels: Path | None, num_classes: int | None
) -> None:
    """Check ``case`` (:func:`~convunext.data.volumes.read_case`: readable, geometry, label values) and write its
    channel files into ``images`` and its label into ``labels``; errors name the source's files."""
    targets = [images / f"{case.name}_{channel:04d}{FILE_ENDING}" for channel in range(len(layout.modalities))]
    if layout.packed_channels:
        shape, affine = _split_packed(case.images[0], len(layout.modalities), targets)
        if case.label is not None:
            read_label_on(case.label, case.images[0], shape, affine, num_classes)
    else:
        read_case(case, num_classes)
        for source, target in zip(case.images, targets):
            _copy_gzipped(source, target)
    if case.label is not None and labels is not None:
        _copy_gzipped(case.label, labels / f"{case.name}{FILE_ENDING}")


def _nnunet_json(layout: VolumeLayout, source_name: str, splits: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "name": layout.name,
        "channel_names": {str(index): modality for index, modality in enumerate(layout.modalities)},
        "labels": {name: value for value, name in enumerate(layout.class_names)},
        "numTraining": len(layout.cases),
        "file_ending": FILE_ENDING,
        "format_version": FORMAT_VERSION,
        "created_by": created_by("volumes"),
        "source": source_name,
        "source_layout": layout.kind,
        "counts": {split: len(splits[split]) for split in ("train", "val", "test")}
        | {"unlabelled": len(layout.test_cases)},
    }


def prepare_volumes(source: Path, out: Path, progress: bool, source_name: str) -> dict[str, Any]:
    """Convert the volume dataset at or below ``source`` into nnU-Net v2's raw layout in ``out`` (see the module
    docstring) and return the ``dataset.json`` written. Called by :func:`~convunext.data.prepare_dataset`, which
    gives an empty ``out`` and removes it on error.

    Raises:
        ConvUNeXtError: no dataset found; the layout's errors; a file that cannot be read, a 4D image whose channel
            count is not the dataset's; any case that fails the read-back check. One line naming the file.
    """
    root = locate_volume_root(source)
    layout = read_layout(root, packed_channels=True)
    splits = folder_splits(root, [case.name for case in layout.cases])
    folders = {"imagesTr": out / "imagesTr", "labelsTr": out / "labelsTr"}
    if layout.test_cases:
        folders["imagesTs"] = out / "imagesTs"
    for folder in folders.values():
        folder.mkdir()
    work = [(case, folders["imagesTr"], folders["labelsTr"], layout.num_classes) for case in layout.cases]
    work += [(case, folders["imagesTs"], None, None) for case in layout.test_cases]
    for case, images, labels, num_classes in tqdm(
        work, desc="prepare volumes", unit="case", disable=not progress, leave=False
    ):
        _write_case(layout, case, images, labels, num_classes)
    (out / "splits.json").write_text(
        json.dumps({split: splits[split] for split in ("train", "val", "test")}, indent=1) + "\n", encoding="utf-8"
    )
    meta = _nnunet_json(layout, source_name, splits)
    meta["files"] = file_digests(out)
    (out / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta
