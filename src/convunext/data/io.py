"""Reading images, masks and field-of-view masks from disk, with one-line errors that name the file.

Every reader returns numpy arrays; the datasets turn them into tensors. Conventions:

* images: ``H x W x C`` float32 in ``[0, 1]`` (8-bit divided by 255, 16-bit by 65535); alpha is dropped;
* masks: ``H x W`` int64 class ids. A binary mask may be stored as ``{0, 255}`` or ``{0, 1}`` (palette images
  are read by their palette *indices*, so DRIVE's second-observer GIFs, which hold 0/1 with a grey palette,
  read right); a multi-class mask holds class ids ``0 .. K-1`` and may use 255 as "ignore";
* field of view: ``H x W`` bool, True inside.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConvUNeXtError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
IGNORE_INDEX = 255


def is_image_file(path: Path) -> bool:
    """True for a regular, non-hidden file whose extension (any case) is one of :data:`IMAGE_EXTENSIONS`."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name."""
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


def open_image(path: Path) -> Image.Image:
    """Open ``path`` and decode it fully (so truncated files fail here, not later)."""
    path = Path(path)
    if not path.exists():
        raise ConvUNeXtError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ConvUNeXtError(f"{path}: cannot read image ({_one_line(error)})") from None
    return image


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image file, read from its header only (cheap)."""
    path = Path(path)
    if not path.exists():
        raise ConvUNeXtError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ConvUNeXtError(f"{path}: cannot read image ({_one_line(error)})") from None
    return height, width


def image_channels(path: Path) -> int:
    """Number of channels :func:`read_image` returns for this file (1 for grey, 3 for colour), from the header."""
    try:
        with Image.open(path) as image:
            mode = image.mode
    except (OSError, SyntaxError, ValueError) as error:
        raise ConvUNeXtError(f"{path}: cannot read image ({_one_line(error)})") from None
    return 1 if mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F") else 3


def read_image(path: Path, channels: int | None = None, reduce: int = 1) -> np.ndarray:
    """Read an image as ``H x W x C`` float32 in ``[0, 1]``.

    Args:
        path: the file.
        channels: 1 or 3 to force grey / RGB; ``None`` keeps the file's own (1 for grey modes, 3 otherwise).
        reduce: keep every ``reduce``-th row and column (used only for statistics); JPEGs are decoded at the
            reduced size directly, which makes statistics on large images cheap. The result has
            ``ceil(H / reduce) x ceil(W / reduce)`` pixels, or near that for JPEGs.
    """
    path = Path(path)
    drafted = False
    if reduce > 1 and path.suffix.lower() in (".jpg", ".jpeg") and path.exists():
        try:
            with Image.open(path) as draft:
                draft_size = draft.size
                draft.draft("RGB", (draft.size[0] // reduce, draft.size[1] // reduce))
                draft.load()
                image = draft.copy()
            drafted = image.size != draft_size
        except (OSError, SyntaxError, ValueError) as error:
            raise ConvUNeXtError(f"{path}: cannot read image ({_one_line(error)})") from None
    else:
        image = open_image(path)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float32)
        scale = 65535.0 if array.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        array = (array / scale)[..., None]
    elif image.mode == "F":
        array = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)[..., None]
    else:
        if image.mode in ("1", "L", "LA"):
            image = image.convert("L")
        elif image.mode != "RGB":
            image = image.convert("RGB")
        array = np.asarray(image, dtype=np.float32) / 255.0
        if array.ndim == 2:
            array = array[..., None]
    if channels == 3 and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif channels == 1 and array.shape[2] == 3:
        array = (array @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    if reduce > 1 and not drafted:
        array = array[::reduce, ::reduce]
    return np.ascontiguousarray(array, dtype=np.float32)


def _raw_values(path: Path) -> np.ndarray:
    """The stored values of a single-channel image: palette indices for palette images, the grey level otherwise.

    Colour files are accepted when all three channels are equal (a grey mask saved as RGB).
    """
    image = open_image(path)
    if image.mode == "1":
        return np.asarray(image.convert("L"), dtype=np.int64)
    if image.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.int64)
    if image.mode in ("LA", "PA"):
        return np.asarray(image, dtype=np.int64)[..., 0]
    if image.mode in ("RGB", "RGBA", "RGBX"):
        array = np.asarray(image.convert("RGB"), dtype=np.int64)
        if not (np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])):
            raise ConvUNeXtError(f"{path}: mask is a colour image; expected one channel of class ids")
        return array[..., 0]
    raise ConvUNeXtError(f"{path}: unsupported mask image mode {image.mode!r}")


def _format_values(values: Iterable[int], limit: int = 8) -> str:
    values = [int(v) for v in values]
    text = ", ".join(str(v) for v in values[:limit])
    return "{" + text + (", ..." if len(values) > limit else "") + "}"


def unique_values(array: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array (a histogram for small non-negative ranges: much faster than
    :func:`numpy.unique` on a full-size mask)."""
    if array.size and array.dtype.kind in "iub" and int(array.min()) >= 0 and int(array.max()) < 65536:
        return np.flatnonzero(np.bincount(array.ravel().astype(np.int64, copy=False)))
    return np.unique(array)


def decode_mask(raw: np.ndarray, path: Path, num_classes: int = 2, instances: bool = False) -> np.ndarray:
    """Turn stored mask values into ``H x W`` int64 class ids.

    Args:
        raw: the stored values (see :func:`_raw_values`).
        path: named in errors.
        num_classes: classes including background. With 2, the stored values must be a subset of ``{0, 255}``
            (255 -> 1) or of ``{0, 1}``. With more, they must be class ids ``0 .. num_classes - 1``, or 255 (ignore).
        instances: the file holds instance ids (GlaS): every value > 0 becomes foreground (1).
    """
    if instances:
        return (raw > 0).astype(np.int64)
    values = unique_values(raw)
    if num_classes == 2:
        if np.isin(values, (0, 1)).all():
            return raw.astype(np.int64, copy=False)
        if np.isin(values, (0, 255)).all():
            return (raw > 0).astype(np.int64)
        raise ConvUNeXtError(
            f"{path}: mask values {_format_values(values)} are neither {{0, 255}} nor {{0, 1}} for a binary dataset"
        )
    allowed = np.append(np.arange(num_classes), IGNORE_INDEX)
    bad = values[~np.isin(values, allowed)]
    if bad.size:
        raise ConvUNeXtError(
            f"{path}: mask values {_format_values(bad)} are not class ids 0..{num_classes - 1} (or 255 = ignore)"
        )
    return raw.astype(np.int64, copy=False)


def read_mask(path: Path, num_classes: int = 2, instances: bool = False) -> np.ndarray:
    """Read a mask file as ``H x W`` int64 class ids (see :func:`decode_mask`)."""
    path = Path(path)
    return decode_mask(_raw_values(path), path, num_classes=num_classes, instances=instances)


def read_fov(path: Path) -> np.ndarray:
    """Read a field-of-view mask as ``H x W`` bool (True inside). Stored as 0/255, 0/1 or any grey/colour image:
    values above half the maximum possible level count as inside."""
    path = Path(path)
    image = open_image(path)
    if image.mode in ("RGB", "RGBA", "RGBX"):
        array = np.asarray(image.convert("L"), dtype=np.int64)
    elif image.mode in ("LA", "PA"):
        array = np.asarray(image, dtype=np.int64)[..., 0]
    elif image.mode == "1":
        array = np.asarray(image.convert("L"), dtype=np.int64)
    else:
        array = np.asarray(image, dtype=np.int64)
    maximum = int(array.max(initial=0))
    if maximum <= 1:
        return array > 0
    return array >= (128 if maximum <= 255 else 32768)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
