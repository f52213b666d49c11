"""HRF (High-Resolution Fundus, Budai et al. 2013): 45 fundus images 3504x2336 — 15 healthy (h), 15 diabetic
retinopathy (dr), 15 glaucoma (g) — with vessel masks and FOV masks.

Distributed layout (``all.zip``, or ``images.zip``, ``manual1.zip`` and ``mask.zip`` side by side)::

    HRF/images/01_h.jpg ... 15_g.jpg        RGB JPEG; the extension's case varies (.jpg / .JPG)
    HRF/manual1/01_h.tif ...                vessels, {0, 255}
    HRF/mask/01_h_mask.tif ...              field of view

The paper splits randomly 24 train / 21 test; this package ships that split as a fixed list, stratified over
h/dr/g (8 train / 7 test each), in ``splits/hrf.json``. ``val`` = 4 of the 24 (06_h, 10_dr, 14_dr, 03_g);
``train`` = the other 20.

Some copies in circulation lack a few manual annotations (one copy lacks those of 11_h, 12_h and 13_h), or hold one
that cannot be decoded (the same copy's ``manual1/11_g.tif`` is truncated). Every annotation is decoded once per
process when the dataset opens; the reader then refuses, naming every image without a usable annotation, why, and the
split it belongs to — before any training, not when the test split is first read. ``skip_unannotated=True``
(``--set data.options.skip_unannotated=true``, ``convunext evaluate --skip-unannotated``) goes on without them and
says which it left out and why, once per process. An image is never dropped in silence.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from ..errors import ConvUNeXtError
from .base import DatasetInfo, FileDataset, FolderIndex, Record, check_split, load_split_file, locate_root, split_stems
from .io import read_mask
from .registry import DatasetSpec, register_dataset

FOLDER_NAME = "HRF"
EXPECTED = "images/, manual1/ and mask/ folders"


def is_hrf_root(path: Path) -> bool:
    """True when ``path`` holds HRF's ``images/`` and ``manual1/`` folders."""
    return (path / "images").is_dir() and (path / "manual1").is_dir()


def locate_hrf(root: str | Path | None) -> Path:
    """The HRF folder under ``root`` (see :func:`~convunext.data.base.locate_root`)."""
    return locate_root(root, FOLDER_NAME, is_hrf_root, FOLDER_NAME, EXPECTED)


def hrf_info(mean: tuple[float, ...] = (0.5, 0.5, 0.5), std: tuple[float, ...] = (0.25, 0.25, 0.25)) -> DatasetInfo:
    """:class:`DatasetInfo` of HRF with the given statistics."""
    return DatasetInfo(
        name="hrf", class_names=["background", "vessel"], in_channels=3, mean=mean, std=std, has_fov=True
    )


class HrfDataset(FileDataset):
    """HRF in its distributed layout.

    Args:
        root: the HRF folder, or a folder containing it (default: ``default_data_root() / "HRF"``).
        split: ``"train"`` (20), ``"val"`` (4), ``"trainval"`` (24) or ``"test"`` (21).
        info: the :class:`DatasetInfo` to attach (the registry passes one with computed mean/std).
        check_sizes: check that each image, mask and FOV have the same size when read.
        skip_unannotated: go on without the images whose manual annotation is missing from this copy or cannot be
            decoded (they are named on stderr, with their splits and why); without it such a copy is refused.

    Raises:
        ConvUNeXtError: a missing image or FOV mask; a missing or undecodable annotation unless
            ``skip_unannotated``.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        info: DatasetInfo | None = None,
        check_sizes: bool = True,
        skip_unannotated: bool = False,
    ) -> None:
        check_split(split)
        root = locate_hrf(root)
        images, manuals, fovs = FolderIndex(root / "images"), FolderIndex(root / "manual1"), FolderIndex(root / "mask")
        if not (root / "mask").is_dir():
            raise ConvUNeXtError(f"{root / 'mask'}: HRF field-of-view folder not found")
        splits = load_split_file("hrf")
        unannotated = unannotated_images(splits, images, manuals)
        unreadable = unreadable_annotations(splits, manuals, set(unannotated))
        if (unannotated or unreadable) and not skip_unannotated:
            raise ConvUNeXtError(
                f"{root / 'manual1'}: {_gaps(unannotated, unreadable)}: this copy of HRF is incomplete; restore the "
                "files, or go on without these images (--set data.options.skip_unannotated=true to train, "
                "--skip-unannotated to evaluate)"
            )
        if unannotated or unreadable:
            _report_skipped(root, unannotated, unreadable)
        unannotated = {**unannotated, **{stem: split for stem, (split, _) in unreadable.items()}}
        records = []
        for stem in split_stems(splits, split):
            if stem in unannotated:
                continue
            image = images.find(stem)
            if image is None:
                raise ConvUNeXtError(f"{root / 'images' / (stem + '.jpg')}: image not found (HRF {split} split)")
            fov = fovs.find(f"{stem}_mask")
            if fov is None:
                raise ConvUNeXtError(f"{image}: no FOV mask ({root / 'mask' / (stem + '_mask.tif')} not found)")
            records.append(Record(stem, image, manuals.find(stem), fov))
        super().__init__(records, info or hrf_info(), split, root, check_sizes=check_sizes)


def unannotated_images(splits: dict[str, list[str]], images: FolderIndex, manuals: FolderIndex) -> dict[str, str]:
    """The images of the HRF split lists present in ``images`` but without a manual annotation in ``manuals``, each
    with the split it belongs to (``train``, ``val`` or ``test``), in split-list order."""
    missing = {}
    for split in ("train", "val", "test"):
        for stem in split_stems(splits, split):
            if images.find(stem) is not None and manuals.find(stem) is None:
                missing[stem] = split
    return missing


def unreadable_annotations(
    splits: dict[str, list[str]], manuals: FolderIndex, skipped: set[str]
) -> dict[str, tuple[str, str]]:
    """The images of the split lists whose annotation in ``manuals`` exists but cannot be decoded (a truncated TIFF),
    each with its split and the reason, in split-list order; ``skipped`` stems are not looked at. Each file is decoded
    once per process (and again when it changes)."""
    found = {}
    for split in ("train", "val", "test"):
        for stem in split_stems(splits, split):
            path = manuals.find(stem) if stem not in skipped else None
            if path is None:
                continue
            stat = path.stat()
            problem = _decoding_problem(path, stat.st_size, stat.st_mtime_ns)
            if problem is not None:
                found[stem] = (split, problem)
    return found


@functools.lru_cache(maxsize=256)
def _decoding_problem(path: Path, size: int, modified: int) -> str | None:
    """Why ``path`` cannot be read as a binary mask, or None (``size`` and ``modified`` key the cache)."""
    try:
        read_mask(path)
    except ConvUNeXtError as error:
        return str(error)
    return None


def _gaps(unannotated: dict[str, str], unreadable: dict[str, tuple[str, str]]) -> str:
    """``"no vessel annotation for 12_h (train), 11_h (test); an unreadable one for 11_g (test: REASON)"``."""
    parts = [f"no vessel annotation for {_describe(unannotated)}"] if unannotated else []
    if unreadable:
        described = ", ".join(f"{stem} ({split}: {reason})" for stem, (split, reason) in unreadable.items())
        parts.append(f"{'an unreadable one' if unannotated else 'an unreadable vessel annotation'} for {described}")
    return "; ".join(parts)


def _describe(unannotated: dict[str, str]) -> str:
    """``"12_h (train), 11_h, 13_h (test)"``."""
    by_split: dict[str, list[str]] = {}
    for stem, split in unannotated.items():
        by_split.setdefault(split, []).append(stem)
    return ", ".join(f"{', '.join(stems)} ({split})" for split, stems in by_split.items())


_REPORTED: set[Path] = set()


def _report_skipped(root: Path, unannotated: dict[str, str], unreadable: dict[str, tuple[str, str]]) -> None:
    """Say once per process and folder which images are left out, and why."""
    if root.resolve() in _REPORTED:
        return
    _REPORTED.add(root.resolve())
    count = len(unannotated) + len(unreadable)
    if unannotated and not unreadable:
        print(f"HRF ({root}): going on without {count} unannotated image(s): {_describe(unannotated)}", file=sys.stderr)
        return
    print(f"HRF ({root}): going on without {count} image(s): {_gaps(unannotated, unreadable)}", file=sys.stderr)


register_dataset(
    DatasetSpec(
        name="hrf",
        title="HRF",
        description="HRF (Budai et al. 2013): 45 fundus images 3504x2336 with vessel and field-of-view masks",
        reader=HrfDataset,
        info=hrf_info,
        is_root=is_hrf_root,
        folder_name=FOLDER_NAME,
        layout=EXPECTED,
        stats_reduce=4,
        stats_options=("skip_unannotated",),
        split_file="hrf",
        locate_download=locate_hrf,
        preset="hrf",
        vessel_metrics=True,
    )
)
