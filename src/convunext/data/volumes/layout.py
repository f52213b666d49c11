"""Volume datasets as they are distributed: the Medical Segmentation Decathlon, nnU-Net v2 raw, a plain folder.

* **Decathlon** (MSD): ``dataset.json`` with ``modality`` (``{"0": "CT"}``), ``labels`` (``{"0": "background",
  "1": ...}``), ``training`` (``[{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]``) and
  ``test`` (``["./imagesTs/y.nii.gz"]``).
* **nnU-Net v2 raw**: ``dataset.json`` with ``channel_names`` (``{"0": "CT"}``), ``labels``
  (``{"background": 0, ...}``) and ``file_ending`` (``".nii.gz"``); ``imagesTr/CASE_0000.nii.gz`` (one file per
  channel, 4-digit suffix), ``labelsTr/CASE.nii.gz``, ``imagesTs/CASE_0000.nii.gz``.
* **Plain folder**: ``images/`` and ``labels/`` (or ``masks/``) holding NIfTI volumes with the same stems (one
  channel, binary unless a ``dataset.json`` names the classes with ``labels`` as above).

:func:`read_layout` reads any of them into a :class:`VolumeLayout`: class names and count, the channels and their
modality (which picks the intensity normalisation, :mod:`~convunext.data.volumes.normalization`), the labelled
cases and the unlabelled test cases. Nothing is decoded: volumes are read when a case is used.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ...errors import ConvUNeXtError
from ..folder import check_complete, first_repeated, read_json
from .nifti import NIFTI_SUFFIXES, is_nifti_path, nifti_stem

__all__ = ["VolumeCase", "VolumeLayout", "is_volume_root", "read_layout"]


@dataclass(frozen=True)
class VolumeCase:
    """One case: its name, one image file per channel and its label file (None for an unlabelled test case)."""

    name: str
    images: tuple[Path, ...]
    label: Path | None = None


@dataclass(frozen=True)
class VolumeLayout:
    """A volume dataset's folder, read by :func:`read_layout`.

    Attributes:
        root: the folder.
        kind: ``"decathlon"``, ``"nnunet"`` or ``"folder"``.
        name: the dataset's name (``dataset.json``'s ``name``, else the folder's).
        class_names: one per label value ``0 .. K-1``, background first.
        modalities: one per image channel (``"CT"``, ``"MRI"``, ``"T2"``...), as the dataset names them.
        cases: the labelled cases, sorted by name.
        test_cases: the unlabelled cases (``imagesTs/``), sorted by name.
        packed_channels: the Decathlon's multi-modal layout, read only with ``read_layout(..., packed_channels=True)``
            (by ``convunext data prepare``, which splits it): each case's one image file holds every channel on
            a 4th axis.
    """

    root: Path
    kind: str
    name: str
    class_names: tuple[str, ...]
    modalities: tuple[str, ...]
    cases: tuple[VolumeCase, ...]
    test_cases: tuple[VolumeCase, ...] = ()
    packed_channels: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_ct(self) -> tuple[bool, ...]:
        """Per channel: whether it holds CT (Hounsfield units), which is normalised over the dataset, not per
        volume."""
        return tuple(modality.strip().upper() == "CT" for modality in self.modalities)


def _read_json(path: Path) -> dict[str, Any]:
    """A ``dataset.json`` (:func:`~convunext.data.folder.read_json`), which must hold an object."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise ConvUNeXtError(f"{path}: expected a JSON object")
    return data


def _label_folder(root: Path) -> Path | None:
    return next((root / name for name in ("labels", "masks") if (root / name).is_dir()), None)


def _nifti_files(folder: Path) -> list[Path]:
    """The NIfTI files of ``folder``, sorted; hidden files are left out (the Decathlon's archives hold macOS
    ``._CASE.nii.gz`` resource forks, which are not volumes)."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if is_nifti_path(path) and not path.name.startswith("."))


def is_volume_root(path: Path) -> bool:
    """Whether ``path`` holds a volume dataset: a ``dataset.json`` beside ``imagesTr/``, or ``images/`` holding
    NIfTI files beside ``labels/`` or ``masks/``."""
    path = Path(path)
    if (path / "dataset.json").is_file() and (path / "imagesTr").is_dir():
        return True
    return _label_folder(path) is not None and bool(_nifti_files(path / "images"))


def _class_names(path: Path, labels: Any) -> tuple[str, ...]:
    """Class names from ``labels``: MSD's ``{"0": "background", "1": "x"}`` or nnU-Net's ``{"background": 0}``;
    the values must be exactly ``0 .. K-1``."""
    if not isinstance(labels, dict) or not labels:
        raise ConvUNeXtError(f"{path}: 'labels' must be a non-empty object of class values and names")
    by_value: dict[int, str] = {}
    for key, value in labels.items():
        if isinstance(value, list):
            raise ConvUNeXtError(
                f"{path}: label {key!r} is a region ({value}); region-based labels are not supported, give one value "
                "per class"
            )
        number, name = (key, value) if str(key).lstrip("-").isdigit() else (value, key)
        try:
            number = int(number)
        except (TypeError, ValueError):
            raise ConvUNeXtError(f"{path}: label {key!r}: {value!r} is not a class value") from None
        if number in by_value:
            raise ConvUNeXtError(f"{path}: class value {number} is given twice")
        by_value[number] = str(name)
    if sorted(by_value) != list(range(len(by_value))):
        raise ConvUNeXtError(
            f"{path}: class values must be 0 .. {len(by_value) - 1} (0 = background), got {sorted(by_value)}"
        )
    return tuple(by_value[value] for value in range(len(by_value)))


def _channels(path: Path, channels: Any, key: str) -> tuple[str, ...]:
    if not isinstance(channels, dict) or not channels:
        raise ConvUNeXtError(f'{path}: {key!r} must be a non-empty object like {{"0": "CT"}}')
    try:
        order = sorted(channels, key=int)
    except ValueError:
        raise ConvUNeXtError(f"{path}: {key!r} keys must be channel numbers 0, 1, ...") from None
    if [int(k) for k in order] != list(range(len(order))):
        raise ConvUNeXtError(f"{path}: {key!r} must number the channels 0 .. {len(order) - 1}")
    return tuple(str(channels[k]) for k in order)


def _existing(path: Path, listed_in: Path, what: str) -> Path:
    if not path.is_file():
        raise ConvUNeXtError(f"{listed_in}: {what} {path} is listed but missing")
    return path


def _read_decathlon(root: Path, meta: dict[str, Any], packed_channels: bool) -> VolumeLayout:
    path = root / "dataset.json"
    class_names = _class_names(path, meta.get("labels"))
    modalities = _channels(path, meta.get("modality"), "modality")
    if len(modalities) > 1 and not packed_channels:
        raise ConvUNeXtError(
            f"{path}: {len(modalities)} modalities in one 4D file per case; convert the folder with `convunext data "
            "prepare volumes SOURCE OUT` (one file per channel, nnU-Net v2's layout) and use OUT"
        )
    training = meta.get("training")
    if not isinstance(training, list) or not training:
        raise ConvUNeXtError(f"{path}: 'training' must list the labelled cases")
    cases = []
    for entry in training:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise ConvUNeXtError(f"{path}: each 'training' entry needs 'image' and 'label', got {entry!r}")
        image = _existing(root / entry["image"], path, "image")
        label = _existing(root / entry["label"], path, "label")
        cases.append(VolumeCase(nifti_stem(image), (image,), label))
    tests = [
        VolumeCase(nifti_stem(root / item), (_existing(root / item, path, "test image"),))
        for item in meta.get("test") or []
        if isinstance(item, str)
    ]
    layout = _layout(root, "decathlon", meta.get("name"), class_names, modalities, cases, tests)
    return replace(layout, packed_channels=len(modalities) > 1)


def _split_channel(path: Path, ending: str) -> tuple[str, int] | None:
    """``CASE_0001.nii.gz`` -> ``("CASE", 1)``; None without a 4-digit channel suffix."""
    stem = path.name[: -len(ending)]
    case, _, channel = stem.rpartition("_")
    if not case or len(channel) != 4 or not channel.isdigit():
        return None
    return case, int(channel)


def _read_nnunet(root: Path, meta: dict[str, Any]) -> VolumeLayout:
    path = root / "dataset.json"
    class_names = _class_names(path, meta.get("labels"))
    modalities = _channels(path, meta.get("channel_names"), "channel_names")
    ending = str(meta.get("file_ending", ".nii.gz"))
    if ending.lower() not in NIFTI_SUFFIXES:
        raise ConvUNeXtError(f"{path}: file_ending {ending!r} is not supported (expected .nii.gz or .nii)")

    def cases_in(images: Path, labels: Path | None) -> list[VolumeCase]:
        channels: dict[str, dict[int, Path]] = {}
        for file in sorted(images.iterdir()) if images.is_dir() else []:
            if not file.name.endswith(ending) or file.name.startswith("."):
                continue
            parsed = _split_channel(file, ending)
            if parsed is None:
                raise ConvUNeXtError(f"{file}: expected CASE_0000{ending} (a 4-digit channel number after the case)")
            channels.setdefault(parsed[0], {})[parsed[1]] = file
        found = []
        for case, files in sorted(channels.items()):
            if sorted(files) != list(range(len(modalities))):
                raise ConvUNeXtError(
                    f"{images}: case {case!r} has channels {sorted(files)}, dataset.json names {len(modalities)} "
                    f"(0 .. {len(modalities) - 1})"
                )
            label = None
            if labels is not None:
                label = labels / f"{case}{ending}"
                if not label.is_file():
                    raise ConvUNeXtError(f"{label}: label of case {case!r} is missing")
            found.append(VolumeCase(case, tuple(files[i] for i in range(len(modalities))), label))
        return found

    cases = cases_in(root / "imagesTr", root / "labelsTr")
    tests = cases_in(root / "imagesTs", None)
    return _layout(root, "nnunet", meta.get("name"), class_names, modalities, cases, tests)


def _read_folder(root: Path) -> VolumeLayout:
    labels_dir = _label_folder(root)
    assert labels_dir is not None  # is_volume_root checked it
    meta_path = root / "dataset.json"
    meta = _read_json(meta_path) if meta_path.is_file() else {}
    class_names = _class_names(meta_path, meta["labels"]) if "labels" in meta else ("background", "foreground")
    modalities = _channels(meta_path, meta["modality"], "modality") if "modality" in meta else ("MRI",)
    labels = {nifti_stem(p): p for p in _nifti_files(labels_dir)}
    cases, tests = [], []
    for image in _nifti_files(root / "images"):
        stem = nifti_stem(image)
        (cases if stem in labels else tests).append(VolumeCase(stem, (image,), labels.get(stem)))
    orphan = sorted(set(labels) - {case.name for case in cases})
    if orphan:
        raise ConvUNeXtError(f"{labels[orphan[0]]}: label volume without an image of the same name in images/")
    return _layout(root, "folder", meta.get("name"), class_names, modalities, cases, tests)


def _layout(
    root: Path,
    kind: str,
    name: Any,
    class_names: tuple[str, ...],
    modalities: tuple[str, ...],
    cases: list[VolumeCase],
    tests: list[VolumeCase],
) -> VolumeLayout:
    if not cases:
        raise ConvUNeXtError(f"{root}: no labelled volumes found ({kind} layout)")
    repeated = first_repeated([case.name for case in cases])
    if repeated is not None:
        raise ConvUNeXtError(f"{root}: case {repeated!r} is listed twice")
    return VolumeLayout(
        root=root,
        kind=kind,
        name=str(name) if name else root.name,
        class_names=class_names,
        modalities=modalities,
        cases=tuple(sorted(cases, key=lambda case: case.name)),
        test_cases=tuple(sorted(tests, key=lambda case: case.name)),
    )


def read_layout(root: str | Path, packed_channels: bool = False) -> VolumeLayout:
    """Read the volume dataset in ``root`` (see the module docstring for the three layouts).

    A ``dataset.json`` with ``channel_names`` is nnU-Net v2's, one with ``modality`` and ``training`` the
    Decathlon's; ``images/`` + ``labels/`` (or ``masks/``) without either is a plain folder.

    Args:
        packed_channels: accept the Decathlon's multi-modal layout (one 4D image file per case), which only
            ``convunext data prepare`` reads; otherwise it is refused with a pointer to that command.

    Raises:
        ConvUNeXtError: no such layout, a malformed ``dataset.json``, a listed file missing (naming the file), a
            folder that ``convunext data prepare`` did not finish.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConvUNeXtError(f"{root}: volume dataset folder not found")
    check_complete(root)
    meta_path = root / "dataset.json"
    if meta_path.is_file() and (root / "imagesTr").is_dir():
        meta = _read_json(meta_path)
        if "channel_names" in meta:
            return _read_nnunet(root, meta)
        if "training" in meta:
            return _read_decathlon(root, meta, packed_channels)
        raise ConvUNeXtError(
            f"{meta_path}: neither nnU-Net v2's (channel_names, labels, file_ending) nor the Decathlon's "
            "(modality, labels, training)"
        )
    if is_volume_root(root):
        return _read_folder(root)
    raise ConvUNeXtError(
        f"{root}: no volume dataset (expected dataset.json with imagesTr/ and labelsTr/ as the Decathlon and nnU-Net "
        "distribute them, or images/ and labels/ holding NIfTI volumes)"
    )
