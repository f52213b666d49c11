"""Segment new images with a trained checkpoint: the Python API behind ``convunext predict``.

>>> predictor = Predictor.from_checkpoint("runs/my-run")           # doctest: +SKIP
>>> result = predictor.predict(image)   # H x W x C array in [0, 1] or uint8, or a C x H x W tensor
>>> result.mask.shape, result.probabilities.shape                  # (H, W), (K, H, W)

Large images go through sliding windows (``tile_size``/``overlap``, Gaussian blending) in bounded memory; images
with a side under the model's minimum (16 px; 64 px for an ONNX-exported ConvUNeXt) are padded for the forward
pass and cropped back (:mod:`convunext.inference.sliding_window`), so every image gets a result of its own size.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..checkpoint import Checkpoint, load_checkpoint
from ..data.io import is_image_file, read_image
from ..errors import ConvUNeXtError
from ..utils.io import atomic_write_files
from .sliding_window import check_window_settings, predict_probabilities

# Overlay colours for classes 1..K-1 (class 0, background, is not tinted); green first: it stands out on both
# fundus (red/orange) and H&E (pink/purple) images.
PALETTE = np.array(
    [[0, 255, 96], [64, 200, 255], [255, 220, 0], [255, 64, 64], [255, 120, 255], [255, 160, 60]], dtype=np.float32
)
OUTPUT_SUFFIXES = ("_mask.png", "_prob.npy", "_overlay.png")
"""What :func:`save_prediction` appends to an image's name: the mask, the probabilities, the overlay."""
PREDICTIONS_MARKER = ".convunext-predictions.json"
"""The file ``convunext predict`` leaves in its output folder: such a folder is never read as input (its masks are
no images to segment), and only the checkpoint named in the file writes into it again."""


@dataclass
class Prediction:
    """One image's result: ``probabilities`` ``K x H x W`` float32 (softmax) and ``mask`` ``H x W`` uint8 class ids."""

    probabilities: np.ndarray
    mask: np.ndarray


class Predictor:
    """A model plus its normalisation and inference settings.

    Args:
        model: a registry model (eval mode is set here).
        mean, std: per-channel normalisation the model was trained with.
        tile_size: sliding-window tile side; ``None`` runs every image whole.
        overlap: fraction of a tile shared with its neighbour (sliding windows only).
        tta: average the predictions of the image and its horizontal / vertical flips.
        batch_size: tiles per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        class_names: names of the output classes (background first).
        backend: ``"fast"`` (the default, as in ``convunext predict``: a fused, BN-folded, channels-last copy made
            once here, so later changes to ``model`` are not seen), ``"eager"`` (the model as is), ``"compile"``
            (the same through ``torch.compile``; the first image compiles) or ``"onnx"`` (ONNX Runtime; needs
            ``convunext[onnx]``; the exported ConvUNeXt graph needs 64 px per side, so smaller images and tiles are
            padded to 64 for it instead of 16). See :func:`convunext.inference.optimize.make_backend`; every
            back-end gives the eager logits within 1e-4 on the same input.

    Raises:
        ConvUNeXtError: a ``tile_size`` under 1, an ``overlap`` outside [0, 1) or a ``batch_size`` under 1, here
            rather than at the first image large enough to be tiled.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        tile_size: int | None = 480,
        overlap: float = 0.25,
        tta: bool = False,
        batch_size: int = 4,
        device: str | torch.device = "auto",
        class_names: Sequence[str] | None = None,
        backend: str = "fast",
    ) -> None:
        from ..utils.device import resolve_device
        from .optimize import make_backend

        try:
            check_window_settings(tile_size, overlap, batch_size)
        except ValueError as error:
            raise ConvUNeXtError(str(error)) from None
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.backend = backend
        self.model = make_backend(model.to(self.device).eval(), backend)
        self.in_channels = len(mean)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.tile_size, self.overlap, self.tta, self.batch_size = tile_size, overlap, tta, batch_size
        self.class_names = list(class_names) if class_names else None

    @classmethod
    def from_checkpoint(cls, path: str | Path | Checkpoint, **kwargs: object) -> Predictor:
        """Build a predictor from a checkpoint (run folder, ``.json`` or ``.safetensors``) alone."""
        checkpoint = path if isinstance(path, Checkpoint) else load_checkpoint(path)
        kwargs.setdefault("class_names", checkpoint.class_names)
        return cls(checkpoint.model, checkpoint.mean, checkpoint.std, **kwargs)  # type: ignore[arg-type]

    def _to_tensor(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(image, np.ndarray):
            if image.ndim == 2:
                image = image[..., None]
            if image.ndim != 3:
                raise ConvUNeXtError(f"expected an H x W x C image array, got shape {image.shape}")
            scale = 255.0 if image.dtype == np.uint8 else 1.0
            image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32) / scale).permute(2, 0, 1)
        if image.ndim != 3:
            raise ConvUNeXtError(f"expected a C x H x W image tensor, got shape {tuple(image.shape)}")
        if image.shape[0] != self.in_channels:
            raise ConvUNeXtError(f"image has {image.shape[0]} channels, the model expects {self.in_channels}")
        return (image.float() - self.mean) / self.std

    def predict(self, image: np.ndarray | torch.Tensor) -> Prediction:
        """Segment one image: ``H x W x C`` array (uint8, or float in [0, 1]) or ``C x H x W`` float tensor.

        Raises:
            ConvUNeXtError: the model's output is not finite (NaN or Inf) for this image.
        """
        return self._segment(image, "image")

    def predict_file(self, path: str | Path) -> tuple[np.ndarray, Prediction]:
        """Read an image file (forced to the model's channel count) and segment it; returns (image, prediction).

        Raises:
            ConvUNeXtError: unreadable file, or a model output that is not finite for it, naming the file.
        """
        image = read_image(Path(path), channels=self.in_channels)
        return image, self._segment(image, str(path))

    @torch.inference_mode()
    def _segment(self, image: np.ndarray | torch.Tensor, source: str) -> Prediction:
        """:meth:`predict`, naming ``source`` when the output is not finite: its argmax would be a plausible
        all-background mask, and its probabilities NaN."""
        batch = self._to_tensor(image)[None]
        probabilities = predict_probabilities(
            self.model,
            batch,
            tile_size=self.tile_size,
            overlap=self.overlap,
            batch_size=self.batch_size,
            tta_flips=self.tta,
            device=self.device,
        )[0]
        if not torch.isfinite(probabilities).all():
            raise ConvUNeXtError(
                f"{source}: the model's output holds NaN or Inf (an input holding them, or weights that overflow "
                "on it); nothing was written for it"
            )
        return Prediction(probabilities.numpy(), probabilities.argmax(0).to(torch.uint8).numpy())


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image (``H x W x C`` float in [0, 1]) with each foreground class tinted and its contour drawn;
    returns ``H x W x 3`` uint8."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
    out = rgb.astype(np.float32) * 255.0
    for class_id in range(1, int(mask.max(initial=0)) + 1):
        region = mask == class_id
        if not region.any():
            continue
        colour = PALETTE[(class_id - 1) % len(PALETTE)]
        out[region] = (1 - alpha) * out[region] + alpha * colour
        out[_boundary(region)] = colour
    return np.clip(out, 0, 255).astype(np.uint8)


def _boundary(region: np.ndarray) -> np.ndarray:
    """Pixels of ``region`` with a 4-neighbour outside it."""
    padded = np.pad(region, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~interior


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files named directly plus the image files inside named folders (sorted), each file once.

    Raises:
        ConvUNeXtError: a missing input, a folder without images, an output folder of ``convunext predict`` (or a
            file in one; see :data:`PREDICTIONS_MARKER`), or two different files with the same stem (both would be
            written as ``NAME_mask.png``: the second would overwrite the first's results).
    """
    files: dict[Path, Path] = {}  # resolved path -> path as given
    for item in map(Path, inputs):
        folder = item if item.is_dir() else item.parent
        if (folder / PREDICTIONS_MARKER).is_file():
            raise ConvUNeXtError(
                f"{item}: convunext predict outputs (its folder holds {PREDICTIONS_MARKER}), not input images; "
                "give the images themselves"
            )
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if is_image_file(p))
            if not found:
                raise ConvUNeXtError(f"{item}: folder holds no images (png, jpg, tif, bmp, gif)")
        elif item.is_file():
            found = [item]
        else:
            raise ConvUNeXtError(f"{item}: no such file or folder")
        for path in found:
            files.setdefault(path.resolve(), path)
    by_stem: dict[str, Path] = {}
    for path in files.values():
        other = by_stem.setdefault(path.stem, path)
        if other is not path:
            raise ConvUNeXtError(
                f"{other} and {path}: same name {path.stem!r}, their outputs would overwrite each other "
                "(rename one or segment them into different --out folders)"
            )
    return list(files.values())


def output_paths(out_dir: Path, name: str, probabilities: bool = False, overlay: bool = False) -> list[Path]:
    """The files :func:`save_prediction` writes for image ``name``: ``NAME_mask.png``, then ``NAME_prob.npy`` and
    ``NAME_overlay.png`` when asked for."""
    wanted = (True, probabilities, overlay)
    return [out_dir / f"{name}{suffix}" for suffix, want in zip(OUTPUT_SUFFIXES, wanted, strict=True) if want]


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def save_prediction(
    out_dir: Path,
    name: str,
    prediction: Prediction,
    image: np.ndarray | None = None,
    probabilities: bool = False,
    binary_as_255: bool = True,
) -> list[Path]:
    """Write ``NAME_mask.png`` (0/255 for two classes, else class ids), optionally ``NAME_prob.npy``
    (``K x H x W`` float16) and, when ``image`` is given, ``NAME_overlay.png``. Returns the written paths.

    The files are written as one set (:func:`~convunext.utils.io.atomic_write_files`): each to a temporary name
    first, all renamed into place once all are complete, so a kill or a full disk never leaves a truncated file
    under an output's name, nor one image's mask without the overlay it asked for.

    Raises:
        ConvUNeXtError: a full disk (or another machine-side write failure), naming the file.
    """
    mask = prediction.mask
    stored = (mask * 255).astype(np.uint8) if binary_as_255 and prediction.probabilities.shape[0] == 2 else mask
    contents = [_png_bytes(stored)]
    if probabilities:
        contents.append(_npy_bytes(prediction.probabilities.astype(np.float16)))
    if image is not None:
        contents.append(_png_bytes(overlay(image, mask)))
    paths = output_paths(out_dir, name, probabilities, image is not None)
    atomic_write_files(list(zip(paths, contents, strict=True)))
    return paths
