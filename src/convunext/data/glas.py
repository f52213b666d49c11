"""GlaS (MICCAI 2015 Gland Segmentation challenge, Warwick QU dataset): 165 H&E colon histology images.

Distributed layout (``Warwick QU Dataset (Released 2016_07_08)/``, all in one folder)::

    train_1.bmp ... train_85.bmp            RGB, ~775x522 (sizes vary)
    train_1_anno.bmp ...                    instance labels: 0 = background, k = gland k
    testA_1.bmp ... testA_60.bmp (+ _anno)
    testB_1.bmp ... testB_20.bmp (+ _anno)
    Grade.csv

Annotations are binarised (label > 0 = gland). Splits: ``test`` = testA + testB (80); ``trainval`` = the 85
training images; ``val`` = train_5, 13, ..., 77 (10, fixed in ``splits/glas.json``); ``train`` = the other 75.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConvUNeXtError
from .base import DatasetInfo, FileDataset, FolderIndex, Record, check_split, load_split_file, locate_root, split_stems
from .registry import DatasetSpec, register_dataset

FOLDER_NAME = "GlaS"
EXPECTED = "train_K.bmp / train_K_anno.bmp, testA_K.bmp, testB_K.bmp files"
_PATTERN = re.compile(r"^(train|testa|testb)_\d+_anno\.[a-z]+$")


def is_glas_root(path: Path) -> bool:
    """True when ``path`` directly holds GlaS annotation files (``train_1_anno.bmp`` ...)."""
    return any(_PATTERN.match(child.name.lower()) for child in path.iterdir() if child.is_file())


def locate_glas(root: str | Path | None) -> Path:
    """The GlaS folder under ``root`` (see :func:`~convunext.data.base.locate_root`)."""
    return locate_root(root, FOLDER_NAME, is_glas_root, FOLDER_NAME, EXPECTED)


def glas_info(mean: tuple[float, ...] = (0.5, 0.5, 0.5), std: tuple[float, ...] = (0.25, 0.25, 0.25)) -> DatasetInfo:
    """:class:`DatasetInfo` of GlaS with the given statistics."""
    return DatasetInfo(name="glas", class_names=["background", "gland"], in_channels=3, mean=mean, std=std)


class GlasDataset(FileDataset):
    """GlaS in its distributed layout (annotations binarised).

    Args:
        root: the folder holding the ``.bmp`` files, or a folder above it (default: ``default_data_root() / "GlaS"``).
        split: ``"train"`` (75), ``"val"`` (10), ``"trainval"`` (85) or ``"test"`` (80 = testA 60 + testB 20).
        info: the :class:`DatasetInfo` to attach (the registry passes one with computed mean/std).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        info: DatasetInfo | None = None,
        check_sizes: bool = True,
    ) -> None:
        check_split(split)
        root = locate_glas(root)
        index = FolderIndex(root)
        stems = split_stems(load_split_file("glas"), split)
        records = []
        prefixes = {stem.split("_")[0] for stem in stems}
        for prefix in sorted(prefixes):
            if not any(key.startswith(prefix.lower() + "_") for key in index.by_stem):
                raise ConvUNeXtError(f"{root}: missing split {split!r} (no {prefix}_K images)")
        for stem in stems:
            image = index.find(stem)
            if image is None:
                raise ConvUNeXtError(f"{root / (stem + '.bmp')}: image not found (GlaS {split} split)")
            mask = index.find(f"{stem}_anno")
            if mask is None:
                raise ConvUNeXtError(f"{image}: no mask ({root / (stem + '_anno.bmp')} not found)")
            records.append(Record(stem, image, mask))
        super().__init__(records, info or glas_info(), split, root, instances=True, check_sizes=check_sizes)


register_dataset(
    DatasetSpec(
        name="glas",
        title="GlaS",
        description="GlaS (MICCAI 2015 challenge): 165 H&E colon histology images with gland annotations",
        reader=GlasDataset,
        info=glas_info,
        is_root=is_glas_root,
        folder_name=FOLDER_NAME,
        layout=EXPECTED,
        stats_reduce=1,
        split_file="glas",
        locate_download=locate_glas,
        preset="glas",
    )
)
