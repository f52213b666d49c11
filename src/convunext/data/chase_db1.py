"""CHASE_DB1 (Fraz et al., IEEE TBME 2012; Child Heart And Health Study in England): 28 colour fundus images
999x960, both eyes of 14 children, with the vessel masks of two observers and no field-of-view masks.

Official layout (``CHASEDB1.zip`` unpacks to one flat folder, named ``CHASEDB1`` in some copies)::

    CHASE_DB1/Image_01L.jpg ... Image_14R.jpg          RGB JPEG
    CHASE_DB1/Image_01L_1stHO.png ...                  vessels by the first human observer, {0, 255}
    CHASE_DB1/Image_01L_2ndHO.png ...                  the second observer

The field of view is derived from each image (:func:`~convunext.data.fov.derive_fov`).

There is no official split; ``splits/chase_db1.json`` ships the common one: the first 20 images (children 01-10)
train, the last 8 (children 11-14) test. ``val`` = both eyes of children 05 and 10 (4 images); ``train`` = the
other 16.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from ..errors import ConvUNeXtError
from .base import (
    DatasetInfo,
    FileDataset,
    FolderIndex,
    Record,
    check_split,
    load_split_file,
    locate_root,
    split_stems,
    vessel_info,
)
from .registry import DatasetSpec, register_dataset

FOLDER_NAME = "CHASE_DB1"
EXPECTED = "Image_01L.jpg ... Image_14R.jpg with their _1stHO.png and _2ndHO.png masks in one folder"
_IMAGE_NAME = re.compile(r"image_\d\d[lr]\.jpe?g", re.IGNORECASE)


def is_chase_db1_root(path: Path) -> bool:
    """True when ``path`` itself holds CHASE_DB1 images (``Image_01L.jpg``, ...)."""
    return any(_IMAGE_NAME.fullmatch(child.name) for child in path.iterdir())


def locate_chase_db1(root: str | Path | None) -> Path:
    """The CHASE_DB1 folder under ``root`` (see :func:`~convunext.data.base.locate_root`): ``root`` itself,
    ``root/CHASE_DB1``, or a folder one or two levels below (the official zip's ``CHASEDB1/``)."""
    return locate_root(root, FOLDER_NAME, is_chase_db1_root, FOLDER_NAME, EXPECTED)


class ChaseDb1Dataset(FileDataset):
    """CHASE_DB1 in its official layout, with derived fields of view.

    Args:
        root: the CHASE_DB1 folder, or a folder containing it (default: ``default_data_root() / "CHASE_DB1"``).
        split: ``"train"`` (16), ``"val"`` (4), ``"trainval"`` (20) or ``"test"`` (8).
        info: the :class:`DatasetInfo` to attach (the registry passes one with computed mean/std).
        observer: 1 (``_1stHO``, the ground truth scores use) or 2 (``_2ndHO``, the second observer); both
            annotated all 28 images, so any split works.
        check_sizes: check that each image and mask have the same size when read.

    Raises:
        ConvUNeXtError: a bad observer, a missing image or mask (naming the file).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        info: DatasetInfo | None = None,
        observer: int = 1,
        check_sizes: bool = True,
    ) -> None:
        check_split(split)
        if observer not in (1, 2):
            raise ConvUNeXtError(f"CHASE_DB1: observer must be 1 or 2, got {observer!r}")
        root = locate_chase_db1(root)
        files = FolderIndex(root)
        suffix = "_1stHO" if observer == 1 else "_2ndHO"
        records = []
        for stem in split_stems(load_split_file("chase_db1"), split):
            image = files.find(stem)
            if image is None:
                raise ConvUNeXtError(f"{root / (stem + '.jpg')}: image not found (CHASE_DB1 {split} split)")
            mask = files.find(stem + suffix)
            if mask is None:
                raise ConvUNeXtError(f"{image}: no vessel mask ({root / (stem + suffix + '.png')} not found)")
            records.append(Record(stem, image, mask))
        self.observer = observer
        super().__init__(
            records, info or vessel_info("chase_db1"), split, root, check_sizes=check_sizes, derived_fov=True
        )


register_dataset(
    DatasetSpec(
        name="chase_db1",
        title="CHASE_DB1",
        description="CHASE_DB1 (Fraz et al. 2012): 28 fundus images 999x960 with two observers' vessel masks",
        reader=ChaseDb1Dataset,
        info=partial(vessel_info, "chase_db1"),
        is_root=is_chase_db1_root,
        folder_name=FOLDER_NAME,
        layout=EXPECTED,
        stats_reduce=1,
        split_file="chase_db1",
        locate_download=locate_chase_db1,
        preset="chase_db1",
        vessel_metrics=True,
        second_observer={"observer": 2},
    )
)
