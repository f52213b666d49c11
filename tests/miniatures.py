"""Miniatures of the distributed DRIVE, GlaS, HRF, STARE and CHASE_DB1 layouts: every file name of the official (or
shipped) split, in the formats, modes and value conventions of the real downloads, but a few pixels in size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from convunext.data.base import load_split_file


def _rgb(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


def _binary(rng: np.random.Generator, height: int, width: int, on: int = 255) -> np.ndarray:
    return (rng.random((height, width)) < 0.3).astype(np.uint8) * on


def _fov(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    inside = (yy - height / 2 + 0.5) ** 2 + (xx - width / 2 + 0.5) ** 2 <= (min(height, width) / 2) ** 2
    return inside.astype(np.uint8) * 255


def make_drive(root: Path, height: int = 12, width: int = 10, seed: int = 0) -> Path:
    """``root/DRIVE`` with the 20 + 20 official file names: RGB tif images, L GIF {0,255} manuals and FOV
    masks, and the test split's second observer as a palette GIF holding {0, 1}."""
    rng = np.random.default_rng(seed)
    drive = root / "DRIVE"
    for part, numbers, suffix in (("training", range(21, 41), "training"), ("test", range(1, 21), "test")):
        for folder in ("images", "1st_manual", "mask") + (("2nd_manual",) if part == "test" else ()):
            (drive / part / folder).mkdir(parents=True, exist_ok=True)
        for number in numbers:
            stem = f"{number:02d}_{suffix}"
            _rgb(rng, height, width).save(drive / part / "images" / f"{stem}.tif")
            Image.fromarray(_binary(rng, height, width), mode="L").save(
                drive / part / "1st_manual" / f"{number:02d}_manual1.gif"
            )
            Image.fromarray(_fov(height, width), mode="L").save(drive / part / "mask" / f"{stem}_mask.gif")
            if part == "test":
                second = Image.fromarray(_binary(rng, height, width, on=1), mode="P")
                second.putpalette([4, 2, 4, 252, 254, 252] + [0, 0, 0] * 254)
                second.save(drive / part / "2nd_manual" / f"{number:02d}_manual2.gif")
    return drive


def make_glas(root: Path, seed: int = 0) -> Path:
    """``root/Warwick QU Dataset (Released 2016_07_08)`` with every official file name: RGB BMP images of
    varying sizes and 8-bit BMP instance labels (0 = background, k = gland k)."""
    rng = np.random.default_rng(seed)
    folder = root / "Warwick QU Dataset (Released 2016_07_08)"
    folder.mkdir(parents=True)
    lists = load_split_file("glas")
    for stem in lists["trainval"] + lists["test"]:
        height, width = int(rng.integers(6, 10)), int(rng.integers(7, 11))
        _rgb(rng, height, width).save(folder / f"{stem}.bmp")
        labels = rng.integers(0, 4, (height, width), dtype=np.uint8)
        Image.fromarray(labels, mode="L").save(folder / f"{stem}_anno.bmp")
    (folder / "Grade.csv").write_text("name,patient ID,grade (GlaS),grade (Sirinukunwattana et al. 2015)\n")
    return folder


def make_hrf(root: Path, height: int = 8, width: int = 12, seed: int = 0) -> Path:
    """``root/HRF`` with the 45 official names: JPEG images whose extension case varies (.jpg / .JPG),
    ``manual1/*.tif`` vessels {0, 255} and ``mask/*_mask.tif`` RGB field-of-view masks."""
    rng = np.random.default_rng(seed)
    hrf = root / "HRF"
    for folder in ("images", "manual1", "mask"):
        (hrf / folder).mkdir(parents=True)
    for index, category in enumerate(("h", "dr", "g")):
        for number in range(1, 16):
            stem = f"{number:02d}_{category}"
            extension = ".JPG" if (number + index) % 3 == 0 else ".jpg"
            _rgb(rng, height, width).save(hrf / "images" / f"{stem}{extension}", quality=95)
            Image.fromarray(_binary(rng, height, width), mode="L").save(hrf / "manual1" / f"{stem}.tif")
            fov = np.repeat(_fov(height, width)[..., None], 3, axis=2)
            Image.fromarray(fov, mode="RGB").save(hrf / "mask" / f"{stem}_mask.tif")
    return hrf


def fundus(rng: np.random.Generator, height: int, width: int) -> tuple[Image.Image, np.ndarray]:
    """A fundus-like RGB photograph and its disc (bool ``H x W``): red 150-255 inside the disc, a frame whose red
    stays under 10 (below the derived FOV's threshold of 20/255)."""
    disc = _fov(height, width) > 0
    pixels = rng.integers(0, 10, (height, width, 3), dtype=np.uint8)
    pixels[disc] = rng.integers(150, 256, (int(disc.sum()), 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB"), disc


def make_stare(root: Path, height: int = 16, width: int = 18, seed: int = 0) -> Path:
    """``root/STARE`` with the 20 image names of the shipped split: RGB PPM fundus images (:func:`fundus`) and
    greymap PPM labels {0, 255} of both observers (``labels-ah/imNNNN.ah.ppm``, ``labels-vk/imNNNN.vk.ppm``); no
    FOV masks, as distributed."""
    rng = np.random.default_rng(seed)
    stare = root / "STARE"
    for folder in ("images", "labels-ah", "labels-vk"):
        (stare / folder).mkdir(parents=True)
    lists = load_split_file("stare")
    for stem in lists["trainval"] + lists["test"]:
        image, _ = fundus(rng, height, width)
        image.save(stare / "images" / f"{stem}.ppm")
        for observer in ("ah", "vk"):
            label = Image.fromarray(_binary(rng, height, width), mode="L")
            label.save(stare / f"labels-{observer}" / f"{stem}.{observer}.ppm")
    return stare


def make_chase_db1(root: Path, folder: str = "CHASE_DB1", height: int = 18, width: int = 16, seed: int = 0) -> Path:
    """``root/folder`` in CHASE_DB1's official flat layout: ``Image_01L.jpg ... Image_14R.jpg`` (JPEG fundus images,
    :func:`fundus`) with ``Image_NNX_1stHO.png`` and ``Image_NNX_2ndHO.png`` masks {0, 255}; no FOV masks."""
    rng = np.random.default_rng(seed)
    chase = root / folder
    chase.mkdir(parents=True)
    lists = load_split_file("chase_db1")
    for stem in lists["trainval"] + lists["test"]:
        image, _ = fundus(rng, height, width)
        image.save(chase / f"{stem}.jpg", quality=95)
        for observer in ("1st", "2nd"):
            Image.fromarray(_binary(rng, height, width), mode="L").save(chase / f"{stem}_{observer}HO.png")
    return chase


def make_folder(
    root: Path, stems: list[str], height: int = 9, width: int = 11, splits: dict | None = None, seed: int = 0
) -> Path:
    """A generic folder dataset: PNG images and {0, 255} PNG masks (and ``splits.json`` when given)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem in stems:
        _rgb(rng, height, width).save(root / "images" / f"{stem}.png")
        Image.fromarray(_binary(rng, height, width), mode="L").save(root / "masks" / f"{stem}.png")
    if splits is not None:
        (root / "splits.json").write_text(json.dumps(splits))
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time (to prove nothing was written there)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}
