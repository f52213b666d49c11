"""STARE (Hoover et al., IEEE TMI 2000): 20 colour fundus images 700x605 with the vessel masks of two observers
and no field-of-view masks.

Layout (the Clemson files, gunzipped)::

    STARE/images/im0001.ppm ... im0324.ppm        RGB (20 files, numbers not contiguous)
    STARE/labels-ah/im0001.ah.ppm ...             vessels by A. Hoover, {0, 255}: the usual ground truth
    STARE/labels-vk/im0001.vk.ppm ...             vessels by V. Kouznetsova, the second observer

The field of view is derived from each image (:func:`~convunext.data.fov.derive_fov`), as is common practice.

There is no official split. ``splits/stare.json`` ships the common 10/10 split (the first ten images by number
train, the other ten test), with ``val`` = im0001 and im0044 (every fifth training image) and ``train`` the other
8. ``fold=k`` (0..19) gives leave-one-out instead: over the 20 images in number order, ``test`` = the k-th,
``trainval`` = the other 19, ``val`` = every fifth of those starting at the first (4), ``train`` = the other 15.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..errors import ConvUNeXtError
from .base import (
    DatasetInfo,
    FileDataset,
    Record,
    check_split,
    load_split_file,
    locate_root,
    split_stems,
    vessel_info,
)
from .registry import DatasetSpec, register_dataset

FOLDER_NAME = "STARE"
EXPECTED = "images/, labels-ah/ and labels-vk/ folders"
OBSERVERS = ("ah", "vk")
"""The observers' label folders (``labels-ah``, ``labels-vk``); ``ah`` is the ground truth scores use."""
VAL_EVERY = 5
"""The validation subset: every fifth training image, starting at the first (the shipped 10/10 list is built so)."""


def is_stare_root(path: Path) -> bool:
    """True when ``path`` holds STARE's ``images/`` and ``labels-ah/`` folders."""
    return (path / "images").is_dir() and (path / "labels-ah").is_dir()


def locate_stare(root: str | Path | None) -> Path:
    """The STARE folder under ``root`` (see :func:`~convunext.data.base.locate_root`)."""
    return locate_root(root, FOLDER_NAME, is_stare_root, FOLDER_NAME, EXPECTED)


def stare_splits(fold: int | None = None) -> dict[str, list[str]]:
    """The split lists: the shipped 10/10 split (``fold=None``), or leave-one-out fold ``fold`` (0..19).

    Raises:
        ConvUNeXtError: ``fold`` is not an integer from 0 to 19.
    """
    lists = load_split_file("stare")
    if fold is None:
        return lists
    images = lists["trainval"] + lists["test"]  # the 20 in number order
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < len(images):
        raise ConvUNeXtError(
            f"STARE: fold must be an integer from 0 to {len(images) - 1} (leave-one-out), got {fold!r}"
        )
    trainval = images[:fold] + images[fold + 1 :]
    return {"trainval": trainval, "val": trainval[::VAL_EVERY], "test": [images[fold]]}


class StareDataset(FileDataset):
    """STARE in its distributed layout, with derived fields of view.

    Args:
        root: the STARE folder, or a folder containing it (default: ``default_data_root() / "STARE"``).
        split: ``"train"`` (8), ``"val"`` (2), ``"trainval"`` (10) or ``"test"`` (10); with ``fold``: 15, 4, 19, 1.
        info: the :class:`DatasetInfo` to attach (the registry passes one with computed mean/std).
        observer: ``"ah"`` (``labels-ah``, the ground truth scores use) or ``"vk"`` (``labels-vk``, the second
            observer); both annotated all 20 images, so any split works.
        fold: None for the 10/10 split, or ``k`` (0..19) for leave-one-out fold ``k`` (:func:`stare_splits`).
        check_sizes: check that each image and mask have the same size when read.

    Raises:
        ConvUNeXtError: a bad observer or fold, a missing image or mask (naming the file).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        info: DatasetInfo | None = None,
        observer: str = "ah",
        fold: int | None = None,
        check_sizes: bool = True,
    ) -> None:
        check_split(split)
        if observer not in OBSERVERS:
            raise ConvUNeXtError(f"STARE: observer must be 'ah' or 'vk', got {observer!r}")
        stems = split_stems(stare_splits(fold), split)
        root = locate_stare(root)
        labels = root / f"labels-{observer}"
        records = []
        for stem in stems:
            image = root / "images" / f"{stem}.ppm"
            if not image.is_file():
                packed = image.with_name(f"{image.name}.gz")
                hint = f"; found {packed.name}: gunzip the STARE files" if packed.is_file() else ""
                raise ConvUNeXtError(f"{image}: image not found (STARE {split} split{hint})")
            mask = labels / f"{stem}.{observer}.ppm"
            if not mask.is_file():
                raise ConvUNeXtError(f"{image}: no vessel mask ({mask} not found)")
            records.append(Record(stem, image, mask))
        self.observer = observer
        self.fold = fold
        super().__init__(records, info or vessel_info("stare"), split, root, check_sizes=check_sizes, derived_fov=True)


register_dataset(
    DatasetSpec(
        name="stare",
        title="STARE",
        description="STARE (Hoover et al. 2000): 20 fundus images 700x605 with two observers' vessel masks",
        reader=StareDataset,
        info=partial(vessel_info, "stare"),
        is_root=is_stare_root,
        folder_name=FOLDER_NAME,
        layout=EXPECTED,
        stats_reduce=1,
        stats_options=("fold",),
        split_file="stare",
        locate_download=locate_stare,
        preset="stare",
        vessel_metrics=True,
        second_observer={"observer": "vk"},
    )
)
