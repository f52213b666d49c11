"""Reading images, masks and field-of-view masks from disk, with one-line errors that name the file.

Every reader returns numpy arrays; the datasets turn them into tensors. Conventions:

* images: ``H x W x C`` float32 in ``[0, 1]`` (8-bit divided by 255, 16-bit by 65535); alpha is dropped;
* masks: ``H x W`` int64 class ids. A binary mask may be stored as ``{0, 255}`` or ``{0, 1}`` (palette images
  are read by their palette *indices*, so DRIVE's second-observer GIFs, which hold 0/1 with a grey palette,
  read right); a multi-class mask holds class ids ``0 .. K-1`` and may use 255 as "ignore";
* field of view: ``H x W`` bool, True inside.

Float images (32-bit TIFF, Pillow mode ``F``) must hold finite values in ``[0, 1]``; NaN, infinities and other
ranges are refused naming the file, since they would train to a NaN loss or read as a saturated image.

Decompression bombs: an image of more than the ``max_image_pixels`` setting of :mod:`convunext.runtime` (by default
the size above which Pillow itself refuses to open a file; ``CONVUNEXT_MAX_IMAGE_PIXELS`` sets another, ``0`` = no
limit) is refused from its header, before anything is decoded. Pillow's own guard (``PIL.Image.MAX_IMAGE_PIXELS``)
is never touched here: :func:`convunext.runtime.configure` raises it to that setting where it is lower.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from .. import runtime
from ..errors import ConvUNeXtError, error_text

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
IGNORE_INDEX = 255
_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # Pillow's 16- and 32-bit single-channel modes


def is_image_file(path: Path) -> bool:
    """True for a regular, non-hidden file whose extension (any case) is one of :data:`IMAGE_EXTENSIONS`."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name."""
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


_FLOAT_TOLERANCE = 1e-3  # float pixels this far outside [0, 1] are rounding noise, clipped; further is refused


def _open(path: Path, load: bool = True, reduce: int = 1) -> Image.Image:
    """Open ``path`` under the ``max_image_pixels`` setting (checked on the header, before decoding).

    Args:
        load: decode the pixels now (so truncated files fail here, not later).
        reduce: for JPEGs, ask the decoder for ``1 / reduce`` of the size (:meth:`PIL.Image.Image.draft`).
    """
    path = Path(path)
    if not path.exists():
        raise ConvUNeXtError(f"{path}: file not found")
    limit = runtime.settings().max_image_pixels
    try:
        image = Image.open(path)
        try:
            width, height = image.size
            if limit and width * height > limit:
                raise _too_large(path, limit, f"{width}x{height} = {width * height:,} pixels")
            if reduce > 1:
                image.draft("RGB", (width // reduce, height // reduce))
            if load:
                image.load()
        except BaseException:
            image.close()
            raise
    except Image.DecompressionBombError:
        raise _too_large(path, limit) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ConvUNeXtError(f"{path}: cannot read image ({error_text(error)})") from None
    return image


def _too_large(path: Path, limit: int, size: str | None = None) -> ConvUNeXtError:
    """The refusal of an image over ``limit`` pixels (0 = none): ``size`` as its header gives it, or None where
    Pillow's own guard refused it first (above twice ``PIL.Image.MAX_IMAGE_PIXELS``, also read from the header)."""
    guard = "a guard against decompression bombs"
    if size is None:
        pillow_limit = 2 * Image.MAX_IMAGE_PIXELS  # type: ignore[operator]  # set: Pillow refused
        if not limit or limit > pillow_limit:
            return ConvUNeXtError(
                f"{path}: more than {pillow_limit:,} pixels, over Pillow's limit (twice PIL.Image.MAX_IMAGE_PIXELS, "
                f"{guard}); call convunext.runtime.configure() to raise it to convunext's max_image_pixels"
            )
        size = f"more than {pillow_limit:,} pixels"
    return ConvUNeXtError(
        f"{path}: {size} is over the limit of {limit:,} ({guard}); set {runtime.MAX_IMAGE_PIXELS_ENV} to a larger "
        "number of pixels (0 = no limit) to read it"
    )


def open_image(path: Path) -> Image.Image:
    """Open ``path`` and decode it fully (so truncated files fail here, not later)."""
    return _open(path)


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image file, read from its header only (cheap)."""
    with _open(path, load=False) as image:
        width, height = image.size
    return height, width


def image_channels(path: Path) -> int:
    """Number of channels :func:`read_image` returns for this file (1 for grey, 3 for colour), from the header."""
    with _open(path, load=False) as image:
        mode = image.mode
    return 1 if mode in ("1", "L", "LA", "F") + _INTEGER_MODES else 3


def _float_pixels(image: Image.Image, path: Path) -> np.ndarray:
    """The values of a float (mode ``F``) image, refused unless finite and in ``[0, 1]`` (up to rounding)."""
    array = np.asarray(image, dtype=np.float32)
    if not np.isfinite(array).all():
        row, col = np.argwhere(~np.isfinite(array))[0]
        raise ConvUNeXtError(
            f"{path}: NaN or infinite pixel values ({array[row, col]} at row {row}, column {col}); "
            "float images must hold finite values in [0, 1]"
        )
    low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
    if low < -_FLOAT_TOLERANCE or high > 1 + _FLOAT_TOLERANCE:
        raise ConvUNeXtError(f"{path}: float pixel values span {low:g}..{high:g}; float images must lie in [0, 1]")
    return np.clip(array, 0.0, 1.0)


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
    draft = reduce > 1 and path.suffix.lower() in (".jpg", ".jpeg")
    image = _open(path, reduce=reduce if draft else 1)
    drafted = draft and image.size != image_size(path)[::-1]
    if image.mode in _INTEGER_MODES:
        array = np.asarray(image, dtype=np.float32)
        low, high = float(array.min(initial=0)), float(array.max(initial=0))
        if low < 0 or high > 65535:
            raise ConvUNeXtError(
                f"{path}: pixel values span {low:g}..{high:g}; expected 8- or 16-bit values (0..65535)"
            )
        scale = 65535.0 if high > 255 or image.mode.startswith("I;16") else 255.0
        array = (array / scale)[..., None]
    elif image.mode == "F":
        array = _float_pixels(image, path)[..., None]
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
    if image.mode in ("P", "L") + _INTEGER_MODES:
        return np.asarray(image, dtype=np.int64)
    if image.mode in ("LA", "PA"):
        return np.asarray(image, dtype=np.int64)[..., 0]
    if image.mode in ("RGB", "RGBA", "RGBX"):
        array = np.asarray(image.convert("RGB"), dtype=np.int64)
        if not (np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])):
            raise ConvUNeXtError(f"{path}: mask is a colour image; expected one channel of class ids")
        return array[..., 0]
    raise ConvUNeXtError(f"{path}: unsupported mask image mode {image.mode!r}")


def read_instances(path: Path) -> np.ndarray:
    """An instance mask's ids (``H x W`` int64, 0 = background, each object its own value), e.g. a GlaS
    annotation; a one-line :class:`ConvUNeXtError` naming an unreadable file."""
    return _raw_values(Path(path))


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
    values above half the maximum possible level count as inside. An empty mask is refused, naming the file."""
    path = Path(path)
    image = open_image(path)
    if image.mode in ("LA", "PA"):
        array = np.asarray(image, dtype=np.int64)[..., 0]
    elif image.mode == "F":
        array = np.round(_float_pixels(image, path)).astype(np.int64)
    elif image.mode in ("P", "L") + _INTEGER_MODES:
        array = np.asarray(image, dtype=np.int64)
    else:  # "1" and the colour modes
        array = np.asarray(image.convert("L"), dtype=np.int64)
    maximum = int(array.max(initial=0))
    inside = array > 0 if maximum <= 1 else array >= (128 if maximum <= 255 else 32768)
    if not inside.any():  # nothing of the image would be scored, and its statistics would be empty
        raise ConvUNeXtError(f"{path}: empty field-of-view mask (no pixel inside it); fix or replace this mask")
    return inside
