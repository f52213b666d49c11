"""DRIVE (Staal et al., IEEE TMI 2004): 40 colour fundus images 565x584 with vessel masks and FOV masks.

Distributed layout (``DRIVE.zip`` unpacks to it)::

    DRIVE/training/images/21_training.tif ... 40_training.tif       RGB
    DRIVE/training/1st_manual/21_manual1.gif ...                     vessels, {0, 255}
    DRIVE/training/mask/21_training_mask.gif ...                     field of view, {0, 255}
    DRIVE/test/images/01_test.tif ... 20_test.tif
    DRIVE/test/1st_manual/01_manual1.gif ...                         the ground truth used for scores
    DRIVE/test/2nd_manual/01_manual2.gif ...                         second observer, palette GIF holding {0, 1}
    DRIVE/test/mask/01_test_mask.gif ...

Splits: ``test`` = the 20 official test images; ``trainval`` = the 20 official training images; ``val`` = 21,
26, 31, 36 (every fifth, fixed in ``splits/drive.json``); ``train`` = the other 16.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConvUNeXtError
from .base import DatasetInfo, FileDataset, FolderIndex, Record, check_split, load_split_file, locate_root, split_stems
from .registry import DatasetSpec, register_dataset

# Mean/std of the 20 official training images ("trainval") inside the FOV, pooled over pixels, values in [0, 1];
# recomputed from the real copy by tests/data/test_data_drive.py: compute_mean_std(DriveDataset(split="trainval")).
# The mean equals the reference code's (0.709, 0.381, 0.224); its std (0.127, 0.079, 0.043) is the average of
# per-image stds, reproduced by compute_mean_std(..., per_image=True).
DRIVE_MEAN = (0.7087, 0.3815, 0.2239)
DRIVE_STD = (0.1812, 0.1142, 0.0689)

DRIVE_INFO = DatasetInfo(
    name="drive", class_names=["background", "vessel"], in_channels=3, mean=DRIVE_MEAN, std=DRIVE_STD, has_fov=True
)
FOLDER_NAME = "DRIVE"
EXPECTED = "training/ and test/ folders with images/, 1st_manual/ and mask/"


def is_drive_root(path: Path) -> bool:
    """True when ``path`` holds DRIVE's ``training/`` or ``test/`` folder with ``images/`` inside."""
    return (path / "training" / "images").is_dir() or (path / "test" / "images").is_dir()


def locate_drive(root: str | Path | None) -> Path:
    """The DRIVE folder under ``root`` (see :func:`~convunext.data.base.locate_root`)."""
    return locate_root(root, FOLDER_NAME, is_drive_root, FOLDER_NAME, EXPECTED)


class DriveDataset(FileDataset):
    """DRIVE in its distributed layout.

    Args:
        root: the DRIVE folder, or a folder containing it (default: ``default_data_root() / "DRIVE"``).
        split: ``"train"`` (16), ``"val"`` (4), ``"trainval"`` (20) or ``"test"`` (20).
        observer: 1 (``1st_manual``, the scoring ground truth) or 2 (``2nd_manual``, test split only).
    """

    def __init__(
        self, root: str | Path | None = None, split: str = "train", observer: int = 1, check_sizes: bool = True
    ) -> None:
        check_split(split)
        if observer not in (1, 2):
            raise ConvUNeXtError(f"DRIVE: observer must be 1 or 2, got {observer}")
        if observer == 2 and split != "test":
            raise ConvUNeXtError("DRIVE: the second observer's masks (2nd_manual) exist for the test split only")
        root = locate_drive(root)
        part = root / ("test" if split == "test" else "training")
        if not part.is_dir():
            raise ConvUNeXtError(f"{part}: missing split {split!r} (folder not found)")
        images = FolderIndex(part / "images")
        manual_folder = part / f"{'1st' if observer == 1 else '2nd'}_manual"
        manuals = FolderIndex(manual_folder)
        fovs = FolderIndex(part / "mask")
        records = []
        for stem in split_stems(load_split_file("drive"), split):
            number = stem.split("_")[0]
            image = images.find(stem)
            if image is None:
                raise ConvUNeXtError(f"{part / 'images' / (stem + '.tif')}: image not found (DRIVE {split} split)")
            mask = manuals.find(f"{number}_manual{observer}")
            if mask is None:
                raise ConvUNeXtError(f"{image}: no mask ({manual_folder / f'{number}_manual{observer}.gif'} not found)")
            fov = fovs.find(f"{stem}_mask")
            if fov is None:
                raise ConvUNeXtError(f"{image}: no FOV mask ({part / 'mask' / f'{stem}_mask.gif'} not found)")
            records.append(Record(stem, image, mask, fov))
        self.observer = observer
        super().__init__(records, DRIVE_INFO, split, root, check_sizes=check_sizes)


register_dataset(
    DatasetSpec(
        name="drive",
        title="DRIVE",
        description="DRIVE (Staal et al. 2004): 40 colour fundus images 565x584 with vessel and field-of-view masks",
        reader=DriveDataset,
        info=DRIVE_INFO,
        is_root=is_drive_root,
        folder_name=FOLDER_NAME,
        layout=EXPECTED,
        split_file="drive",
        locate_download=locate_drive,
        preset="drive",
        vessel_metrics=True,
        second_observer={"observer": 2},
    )
)
