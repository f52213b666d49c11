"""A generic folder of images and masks — the layout ``convunext data prepare`` writes, and the one to use for
your own data::

    ROOT/images/<stem>.png|jpg|tif|bmp|gif    images (grey or colour, 8 or 16 bit)
    ROOT/masks/<stem>.<any image ext>          one mask per image, same stem: 0/255 or 0/1 (binary) or class ids
    ROOT/fov/<stem>.<ext>                      optional field-of-view masks (if the folder exists, one per image)
    ROOT/splits.json                           optional: {"train": [stems], "val": [...], "test": [...]}
    ROOT/dataset.json                          optional: {"name", "class_names", "mean", "std", ...}

Splits. With ``splits.json``: the lists it holds; ``trainval`` = ``train`` + ``val`` when not listed; when it has
no ``val``, every fifth of its ``train`` stems (sorted) is carved out as ``val``. A split it does not have (and
cannot derive) is an error. Without ``splits.json``: over the sorted stems, every fifth (positions 4, 9, ...) is
``test``; of the rest, every fifth is ``val``; the others are ``train``.

Interrupted ``data prepare``. The layout alone cannot tell a hand-made folder (which may lack ``splits.json`` and
``dataset.json``) from one that ``convunext data prepare`` was killed while writing. So prepare writes the marker
file :data:`INCOMPLETE_MARKER` first, into a temporary sibling of its output folder, and removes it only after
``dataset.json`` (its completion record) is written, just before renaming the folder into place. Every reader
here refuses a folder holding the marker; a folder without it is read as the user's own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import ConvUNeXtError
from .base import BINARY_CLASS_NAMES, DatasetInfo, FileDataset, FolderIndex, Record, check_split
from .io import image_channels, list_images
from .registry import DatasetSpec, register_dataset

EVERY = 5
INCOMPLETE_MARKER = ".convunext-prepare-incomplete"


def is_folder_root(path: Path) -> bool:
    """True for the folder layout: ``images/`` and ``masks/`` side by side."""
    return (path / "images").is_dir() and (path / "masks").is_dir()


def locate_in_download(source: Path) -> Path:
    """The folder dataset in a download for ``convunext data prepare``: ``source`` itself, or the first of its
    sub-folders (in name order, hidden ones skipped) that holds ``images/``.

    Raises:
        ConvUNeXtError: neither ``source`` nor a sub-folder holds ``images/``.
    """
    candidates = [source] + sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    for candidate in candidates:
        if (candidate / "images").is_dir():
            return candidate
    raise ConvUNeXtError(f"{source}: no folder dataset found (expected images/ and masks/)")


def check_complete(root: Path) -> None:
    """Refuse a folder that ``convunext data prepare`` began but did not finish (see module docstring).

    Raises:
        ConvUNeXtError: ``root`` holds :data:`INCOMPLETE_MARKER`; the message names the folder.
    """
    if (Path(root) / INCOMPLETE_MARKER).exists():
        raise ConvUNeXtError(
            f"{root}: looks like an interrupted `convunext data prepare` (it holds {INCOMPLETE_MARKER} and no "
            "completed dataset.json); delete this folder and re-run convunext data prepare"
        )


def _every_fifth(stems: list[str]) -> tuple[list[str], list[str]]:
    """Split sorted ``stems`` into (rest, every fifth); the second part is never empty when there are >= 2."""
    picked = [stem for i, stem in enumerate(stems) if i % EVERY == EVERY - 1]
    if not picked and len(stems) >= 2:
        picked = [stems[-1]]
    chosen = set(picked)
    return [stem for stem in stems if stem not in chosen], picked


def read_json(path: Path) -> Any:
    """Parse a JSON file, with a one-line error naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ConvUNeXtError(f"{path}: cannot read ({error})") from None
    except json.JSONDecodeError as error:
        raise ConvUNeXtError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None


def first_repeated(items: list[str]) -> str | None:
    """The first item of ``items`` that occurs again later, or None."""
    seen: set[str] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None


def folder_splits(root: Path, stems: list[str]) -> dict[str, list[str]]:
    """Every split of a folder dataset whose sorted image stems are ``stems`` (see module docstring)."""
    path = root / "splits.json"
    if not path.is_file():
        rest, test = _every_fifth(sorted(stems))
        train, val = _every_fifth(rest)
        return {"train": train, "val": val, "test": test, "trainval": rest}
    data = read_json(path)
    if not isinstance(data, dict):
        raise ConvUNeXtError(f"{path}: expected an object mapping split names to lists of image stems")
    known = set(stems)
    splits: dict[str, list[str]] = {}
    for name, listed in data.items():
        if not isinstance(listed, list) or not all(isinstance(stem, str) for stem in listed):
            raise ConvUNeXtError(f"{path}: split {name!r} must be a list of image stems")
        missing = [stem for stem in listed if stem not in known]
        if missing:
            raise ConvUNeXtError(f"{path}: split {name!r} lists {missing[0]!r}, which has no image in images/")
        repeated = first_repeated(listed)
        if repeated is not None:
            raise ConvUNeXtError(
                f"{path}: split {name!r} lists {repeated!r} {listed.count(repeated)} times; list each image once"
            )
        splits[name] = list(listed)
    for first, second in (("train", "val"), ("train", "test"), ("val", "test"), ("trainval", "test")):
        shared = sorted(set(splits.get(first, [])) & set(splits.get(second, [])))
        if shared:
            raise ConvUNeXtError(f"{path}: {shared[0]!r} is in both {first!r} and {second!r}")
    if "train" in splits and "val" not in splits:
        splits["train"], splits["val"] = _every_fifth(sorted(splits["train"]))
    if "trainval" not in splits and "train" in splits:
        splits["trainval"] = splits["train"] + splits.get("val", [])
    return splits


class FolderDataset(FileDataset):
    """Images and masks in a folder (see module docstring).

    Args:
        root: the folder holding ``images/`` and ``masks/``.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"trainval"``.
        class_names: class names, background first (default: ``dataset.json``'s, else binary).
        info: the :class:`DatasetInfo` to attach (the registry passes one with mean/std filled in).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        class_names: list[str] | None = None,
        info: DatasetInfo | None = None,
        check_sizes: bool = True,
    ) -> None:
        check_split(split)
        root = Path(root).expanduser()
        images_dir, masks_dir, fov_dir = root / "images", root / "masks", root / "fov"
        if not root.is_dir():
            raise ConvUNeXtError(f"{root}: folder not found")
        check_complete(root)
        if not images_dir.is_dir():
            raise ConvUNeXtError(f"{root}: no images/ folder (a folder dataset needs images/ and masks/)")
        image_files = list_images(images_dir)
        if not image_files:
            raise ConvUNeXtError(f"{images_dir}: no images found (png, jpg, tif, bmp or gif)")
        seen: dict[str, Path] = {}
        by_lower_stem: dict[str, Path] = {}  # masks and FOVs are found case-insensitively: a.png and A.png clash
        for path in image_files:
            other = by_lower_stem.setdefault(path.stem.lower(), path)
            if other is not path:
                raise ConvUNeXtError(f"{path}: two images share the stem {path.stem!r} ({other.name})")
            seen[path.stem] = path
        if not masks_dir.is_dir():
            raise ConvUNeXtError(f"{root}: no masks/ folder (a folder dataset needs images/ and masks/)")
        splits = folder_splits(root, list(seen))
        if split not in splits:
            raise ConvUNeXtError(f"{root / 'splits.json'}: missing split {split!r}")
        masks, fovs = FolderIndex(masks_dir), FolderIndex(fov_dir) if fov_dir.is_dir() else None
        records = []
        for stem in splits[split]:
            image = seen[stem]
            mask = masks.find(stem)
            if mask is None:
                raise ConvUNeXtError(f"{image}: no mask (masks/{stem}.* not found)")
            fov = None
            if fovs is not None:
                fov = fovs.find(stem)
                if fov is None:
                    raise ConvUNeXtError(f"{image}: no FOV mask (fov/{stem}.* not found)")
            records.append(Record(stem, image, mask, fov))
        if not records:
            raise ConvUNeXtError(f"{root}: split {split!r} is empty")
        if info is None:
            info = folder_info_without_stats(root, class_names)
        self.splits = splits
        super().__init__(records, info, split, root, check_sizes=check_sizes)


def load_dataset_json(root: Path) -> dict[str, Any]:
    """``root/dataset.json`` as a dict (empty when absent); refuses an interrupted prepare's folder."""
    check_complete(root)
    path = Path(root) / "dataset.json"
    if not path.is_file():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise ConvUNeXtError(f"{path}: expected a JSON object")
    return data


def folder_info_without_stats(root: Path, class_names: list[str] | None = None) -> DatasetInfo:
    """:class:`DatasetInfo` of a folder dataset from ``dataset.json`` and the first image's header; mean/std
    from ``dataset.json`` when present, else placeholders (0.5, 0.25) — the registry computes real ones."""
    root = Path(root)
    meta = load_dataset_json(root)
    path = root / "dataset.json"
    names = class_names or meta.get("class_names") or list(BINARY_CLASS_NAMES)
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise ConvUNeXtError(f"{path}: class_names must be a list of at least 2 names, background first")
    repeated = first_repeated(names)
    if repeated is not None:
        raise ConvUNeXtError(f"{path}: class_names lists {repeated!r} twice; give each class its own name")
    if len(names) > 255:
        raise ConvUNeXtError(f"{path}: at most 255 classes are supported (255 is the ignore value)")
    images = list_images(root / "images") if (root / "images").is_dir() else []
    in_channels = meta.get("in_channels") or (image_channels(images[0]) if images else 3)
    if in_channels not in (1, 3):
        raise ConvUNeXtError(f"{path}: in_channels must be 1 or 3, got {in_channels!r}")
    mean = meta.get("mean", [0.5] * in_channels)
    std = meta.get("std", [0.25] * in_channels)
    for key, value in (("mean", mean), ("std", std)):
        if not isinstance(value, list) or len(value) != in_channels or not all(map(_is_finite_number, value)):
            raise ConvUNeXtError(f"{path}: {key} must be a list of {in_channels} finite numbers, got {value!r}")
    # image values are read into [0, 1]: statistics in 0..255 units (ImageNet's 123.7, ...) would normalise wrongly
    if not all(0 <= v <= 1 for v in mean):
        raise ConvUNeXtError(f"{path}: mean {mean} is not in [0, 1]; give it in the units of pixel / 255")
    if not all(0 < v <= 1 for v in std):
        raise ConvUNeXtError(f"{path}: std {std} must be positive and at most 1 (in the units of pixel / 255)")
    return DatasetInfo(
        name=str(meta.get("name") or root.name),
        class_names=list(names),
        in_channels=int(in_channels),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        has_fov=(root / "fov").is_dir(),
    )


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def folder_has_stats(root: Path) -> bool:
    """Whether ``root/dataset.json`` provides mean and std."""
    meta = load_dataset_json(root)
    return "mean" in meta and "std" in meta


register_dataset(
    DatasetSpec(
        name="folder",
        title="Folder",
        description="your own data: images/ + masks/ (+ fov/, splits.json, dataset.json), the layout data prepare "
        "writes",
        reader=FolderDataset,
        info=folder_info_without_stats,
        is_root=is_folder_root,
        layout="images/ + masks/",
        stats_reduce=1,
        has_stored_stats=folder_has_stats,
        locate_download=locate_in_download,
    )
)
