"""The :class:`Inferer`: class probabilities of a model for whole images, tiled with overlap and Gaussian blending
when they are large — configured once, then called with a model and images.

>>> inferer = Inferer(tile_size=512, overlap=0.25, tta=True, device="cpu")     # doctest: +SKIP
>>> model = inferer.prepare(checkpoint.model)      # on the device, through the back-end (fast by default)
>>> probabilities = inferer(model, images)         # N x C x H x W normalised images -> N x K x H x W

Sliding windows. An image larger than ``tile_size`` is cut into tiles of that size (raised to the model's minimum
side where the image allows it, and clipped to the image in a dimension where the image is smaller: that dimension
is then processed whole), placed on a grid whose steps are at most ``tile * (1 - overlap)`` and spread evenly so the
last tile ends exactly at the image border. Every pixel is covered. Each tile's logits go through a softmax over
classes; the tile probabilities are averaged with per-pixel weights — a separable Gaussian centred on the tile with
standard deviation ``sigma_scale * tile`` (nnU-Net's importance map), clamped below at ``1e-4`` of its peak so every
weight is positive — or constant weights. Accumulators (weighted sum N x K x H x W and one H x W weight map shared by
all images) live on ``output_device``, so only ``batch_size`` tiles are on the compute device at a time and a 3504 x
2336 image needs about ``(K + 1) * 4 * H * W`` bytes of host memory plus the input. Images that fit in one tile (or
every image, without a tile size) go through the model whole, ``batch_size`` images per pass.

Small inputs. The registry models halve the resolution four times, so they need every side >= 16 px
(:data:`MIN_INPUT_SIZE`); an exported ONNX graph may need more (its ``min_size`` attribute, 64 px for ConvUNeXt).
Every forward pass here — whole image or tile, each TTA flip — pads a smaller input at the bottom and right with 0
(in normalised space, the dataset's mean colour, as ``pad_collate`` pads training batches) up to that size and crops
the probabilities back, so images of any size, down to 1 x 1, get a prediction of their own size (deterministic;
pixels near the padding see it through the model's receptive field).

Flip test-time augmentation (``tta=True``) averages the softmax probabilities of the tile, the tile flipped
left-right and the tile flipped top-bottom (each flipped back), before blending: 3 forward passes.

The model is switched to eval mode during the call (its previous mode is restored afterwards) and runs under
``torch.inference_mode``. If it returns a list/tuple (deep supervision) the last element is used; a dict uses its
``"out"`` entry.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from numbers import Integral
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConvUNeXtError
from ..utils.device import resolve_device
from ..utils.modules import eval_mode, module_device
from .onnx_runtime import require_onnxruntime
from .optimize import BACKENDS, make_backend

__all__ = ["DEFAULT_OVERLAP", "MIN_INPUT_SIZE", "Inferer", "gaussian_importance_map", "tile_starts"]

MIN_GAUSSIAN_WEIGHT = 1e-4
MIN_INPUT_SIZE = 16
"""Smallest side every registry model accepts (four halvings); smaller inputs are padded up to it."""
DEFAULT_OVERLAP = 0.25
"""The overlap of neighbouring tiles unless told otherwise (and that of every report before it was recorded)."""
BLENDS = ("gaussian", "constant")


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    """A tile size as (height, width): one side for both, or a pair."""
    pair = (value, value) if isinstance(value, Integral) else (value[0], value[1])
    if min(pair) < 1:
        raise ValueError(f"tile sides must be positive, got {value!r}")
    return int(pair[0]), int(pair[1])


def _tile_sides(tile_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``tile_size`` as (height, width), or None for whole images (``None`` or 0).

    Raises:
        ConvUNeXtError: anything but None, 0, a positive side or a pair of positive sides.
    """
    if tile_size is None or (isinstance(tile_size, Integral) and tile_size == 0):
        return None
    if isinstance(tile_size, Integral):
        sides: Sequence[Any] = (tile_size,)
    else:
        sides = tile_size if isinstance(tile_size, (tuple, list)) and len(tile_size) == 2 else ()
    if not sides or not all(isinstance(side, Integral) and side > 0 for side in sides):
        raise ConvUNeXtError(
            f"tile_size={tile_size!r} is not valid; expected a tile side in pixels, (height, width), 0 for whole "
            "images, or None"
        )
    return _pair(tile_size)


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)``; ``tile <= length``.

    The number of tiles is the smallest for which consecutive tiles overlap by at least ``overlap * tile``
    (step at most ``tile - ceil(overlap * tile)``, at least 1); the starts are spread evenly from 0 to
    ``length - tile``.
    """
    if tile > length:
        raise ValueError(f"tile {tile} is larger than the image dimension {length}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if tile == length:
        return [0]
    max_step = max(1, tile - math.ceil(overlap * tile - 1e-9))
    count = math.ceil((length - tile) / max_step) + 1
    step = (length - tile) / (count - 1)
    return [round(i * step) for i in range(count)]


def gaussian_importance_map(
    tile_size: int | tuple[int, int], sigma_scale: float = 0.125, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Separable Gaussian weights (tile_h x tile_w), peak 1 at the tile centre, sigma = sigma_scale * side.

    Values are clamped below at ``MIN_GAUSSIAN_WEIGHT`` (1e-4), so every weight is positive.
    """
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale}")
    axes = []
    for side in _pair(tile_size):
        coords = np.arange(side, dtype=np.float64) - (side - 1) / 2.0
        sigma = sigma_scale * side
        axes.append(np.exp(-0.5 * (coords / sigma) ** 2))
    weights = np.outer(axes[0], axes[1])
    weights /= weights.max()
    weights = np.maximum(weights, MIN_GAUSSIAN_WEIGHT)
    return torch.from_numpy(weights).to(dtype)


def _logits(model: nn.Module, batch: Tensor) -> Tensor:
    output: Any = model(batch)
    if isinstance(output, dict):
        output = output["out"]
    if isinstance(output, (list, tuple)):
        output = output[-1]
    if not isinstance(output, Tensor) or output.dim() != 4:
        raise ValueError("the model must return logits N x K x H x W")
    if output.shape[0] != batch.shape[0] or output.shape[2:] != batch.shape[2:]:
        raise ValueError(
            f"the model returned shape {tuple(output.shape)} for input {tuple(batch.shape)}; "
            "expected N x K x H x W at the input's size"
        )
    return output


def _min_side(model: nn.Module, min_size: int) -> int:
    """The side inputs are padded up to: ``min_size``, or the model's own ``min_size`` attribute when larger
    (:class:`~convunext.inference.optimize.OnnxRuntimeModule` carries its exported graph's minimum)."""
    return max(int(min_size), int(getattr(model, "min_size", 1)))


def _softmax(model: nn.Module, batch: Tensor, min_side: int) -> Tensor:
    """Softmax of the model's logits for ``batch``, padded at the bottom/right with 0 up to ``min_side`` per
    side for the forward pass and cropped back to the batch's size."""
    height, width = batch.shape[-2:]
    pad_h, pad_w = max(0, min_side - height), max(0, min_side - width)
    if pad_h or pad_w:
        batch = F.pad(batch, (0, pad_w, 0, pad_h))
    return torch.softmax(_logits(model, batch)[..., :height, :width].float(), dim=1)


def _probabilities(model: nn.Module, batch: Tensor, tta: bool, min_side: int) -> Tensor:
    """Softmax probabilities N x K x h x w for a batch of images or tiles, optionally flip-TTA averaged.

    The forward passes run under ``torch.inference_mode``; the result is cloned out of it so callers get an
    ordinary tensor they may modify in place.
    """
    with torch.inference_mode():
        probs = _softmax(model, batch, min_side)
        if tta:
            for dim in (-1, -2):
                probs = probs + _softmax(model, batch.flip(dim), min_side).flip(dim)
            probs = probs / 3.0
    return probs.clone()


def _check_images(images: Tensor | np.ndarray) -> tuple[Tensor, bool]:
    """``images`` as an N x C x H x W float tensor, and whether a C x H x W input's batch dim is to be dropped."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a tensor or numpy array, got {type(images).__name__}")
    squeeze = images.dim() == 3
    if squeeze:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ValueError(f"images must be N x C x H x W (or C x H x W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        images = images.float()
    return images, squeeze


@dataclasses.dataclass(frozen=True)
class Inferer:
    """How a model is run over images — tiles, overlap, flip TTA, batch, device, back-end — set (and checked) once,
    then called: ``inferer(model, images)`` gives the softmax probabilities (see the module docstring).

    Every command that predicts (``predict``, ``evaluate``, ``compare``, ``reproduce``, ``ablate``) builds one from
    the same flags, and :class:`~convunext.inference.predictor.Predictor`, :func:`~convunext.evaluation.evaluate.
    evaluate_model` and the functions above them take it. It is immutable: :func:`dataclasses.replace` makes a
    changed copy (checked again).

    Attributes:
        tile_size: sliding-window tile side, or (height, width). ``0`` runs every image whole; ``None`` (the
            default) too, except where a checkpoint is run (:meth:`for_checkpoint`): there it means the
            checkpoint's own tile size, the one it was validated with.
        overlap: minimum fraction of a tile shared with its neighbour, in [0, 1).
        batch_size: tiles (or whole images) per forward pass.
        tta: average the probabilities of each image or tile and of its left-right and top-bottom flips
            (3 forward passes).
        device: where :meth:`prepare` puts the model (``"auto"``: CUDA when available, else the CPU; ``"cpu"``,
            ``"cuda"``, ``"cuda:N"``, ``"mps"``); resolved to a ``torch.device`` here. A call runs on the device of
            the model it is given (on this one for a model without tensors, e.g. ONNX Runtime's).
        backend: how :meth:`prepare` runs the model: ``"fast"`` (fused, BN-folded, channels-last copy), ``"eager"``
            (the model as it is), ``"compile"`` or ``"onnx"``
            (:func:`~convunext.inference.optimize.make_backend`; each gives the eager logits within 1e-4).
        blend: how overlapping tiles are averaged: ``"gaussian"`` (centre-weighted, nnU-Net style) or
            ``"constant"``.
        sigma_scale: the Gaussian's sigma as a fraction of the tile side.
        output_device: where the accumulators and the result live (default CPU: bounded GPU memory).
        progress: show a tqdm bar over the tiles of a tiled call.
        min_size: smallest side the model accepts (or its ``min_size`` attribute, when larger); smaller images and
            tiles are padded up to it for the forward pass.

    Raises:
        ConvUNeXtError: a tile size that is not a positive side, a pair of them, 0 or None; an overlap outside
            [0, 1) (NaN included); a batch size under 1; an unknown device, blend or back-end; ``"onnx"`` without
            onnxruntime installed — here, before any image is run.
    """

    tile_size: int | tuple[int, int] | None = None
    overlap: float = DEFAULT_OVERLAP
    batch_size: int = 4
    tta: bool = False
    device: torch.device | str = "auto"
    backend: str = "fast"
    blend: Literal["gaussian", "constant"] = "gaussian"
    sigma_scale: float = 0.125
    output_device: torch.device | str = "cpu"
    progress: bool = False
    min_size: int = MIN_INPUT_SIZE

    def __post_init__(self) -> None:
        _tile_sides(self.tile_size)
        if not 0.0 <= self.overlap < 1.0:
            raise ConvUNeXtError(f"overlap={self.overlap!r} is not valid; expected a fraction, at least 0 and below 1")
        if not isinstance(self.batch_size, Integral) or self.batch_size < 1:
            raise ConvUNeXtError(f"batch_size={self.batch_size!r} is not valid; expected an integer of at least 1")
        if self.blend not in BLENDS:
            raise ConvUNeXtError(f"blend={self.blend!r} is not valid; expected one of {', '.join(BLENDS)}")
        if not self.sigma_scale > 0:
            raise ConvUNeXtError(f"sigma_scale={self.sigma_scale!r} is not valid; expected a positive fraction")
        if self.backend not in BACKENDS:
            raise ConvUNeXtError(f"unknown inference backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.backend == "onnx":
            require_onnxruntime()
        if not isinstance(self.device, torch.device):
            object.__setattr__(self, "device", resolve_device(self.device))
        object.__setattr__(self, "output_device", torch.device(self.output_device))

    def for_checkpoint(self, meta: Mapping[str, Any]) -> Inferer:
        """This inferer for the checkpoint described by ``meta``: without a tile size (``None``), the checkpoint's
        own (``meta["data"]["eval_tile_size"]``, the one it was validated with; 0 — whole images — when it has
        none); otherwise itself."""
        if self.tile_size is not None:
            return self
        return dataclasses.replace(self, tile_size=meta.get("data", {}).get("eval_tile_size") or 0)

    def record(self) -> dict[str, Any]:
        """The settings that decide the probabilities, for a report's record: ``tile_size`` (None: whole images),
        ``overlap`` (None for whole images, where it plays no part) and ``tta``."""
        tile = _tile_sides(self.tile_size)
        tile_size = None if tile is None else self.tile_size if isinstance(self.tile_size, Integral) else list(tile)
        return {"tile_size": tile_size, "overlap": None if tile is None else self.overlap, "tta": self.tta}

    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` ready for this inferer: moved to :attr:`device` (in place), in eval mode and run by
        :attr:`backend` — for every back-end but ``eager`` a new module, made once here, so later changes to
        ``model`` are not seen.

        Raises:
            ConvUNeXtError: the back-end cannot take the model (e.g. an ONNX export that fails).
        """
        return make_backend(model.to(self.device).eval(), self.backend)

    def __call__(self, model: nn.Module, images: Tensor | np.ndarray, scale: float = 1.0) -> Tensor:
        """Softmax probabilities of ``model`` for ``images``: whole when they fit in one tile (or without a tile
        size), tile by tile otherwise.

        Args:
            model: maps ``N x C x h x w`` to logits ``N x K x h x w`` (any h, w down to the minimum side), e.g.
                :meth:`prepare`'s module; run as it is, on its own device.
            images: ``N x C x H x W`` (or ``C x H x W``) normalised images, a float tensor on any device or a numpy
                array (integer arrays are cast to float32 as they are: normalise first).
            scale: resize the images by this factor before the model (bilinear, antialiased when shrinking) and
                the probabilities back to ``H x W`` after it (:mod:`~convunext.inference.scale` decides it);
                tiles are cut from the resized images.

        Returns:
            ``N x K x H x W`` (or ``K x H x W``) float32 probabilities on :attr:`output_device`, summing to 1 over
            K at every pixel.
        """
        images, squeeze = _check_images(images)
        height, width = images.shape[-2:]
        if scale != 1.0:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1.0)
        tile = _tile_sides(self.tile_size)
        run_device = module_device(model, self.device)
        with eval_mode(model):
            if tile is not None and (images.shape[-2] > tile[0] or images.shape[-1] > tile[1]):
                result = self._tiled(model, images, tile, run_device)
            else:
                result = self._whole(model, images, run_device)
        if result.shape[-2:] != (height, width):
            result = F.interpolate(
                result, size=(height, width), mode="bilinear", align_corners=False, antialias=scale > 1.0
            )
        return result[0] if squeeze else result

    def _whole(self, model: nn.Module, images: Tensor, run_device: torch.device) -> Tensor:
        """``N x K x H x W`` probabilities, ``batch_size`` whole images per forward pass."""
        min_side = _min_side(model, self.min_size)
        outputs = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start : start + self.batch_size].to(run_device)
            outputs.append(_probabilities(model, batch, self.tta, min_side).to(self.output_device))
        return torch.cat(outputs)

    def _tiled(self, model: nn.Module, images: Tensor, tile: tuple[int, int], run_device: torch.device) -> Tensor:
        """``N x K x H x W`` probabilities blended from tiles of ``tile`` (height, width), ``batch_size`` tiles
        per forward pass."""
        n, _, height, width = images.shape
        min_side = _min_side(model, self.min_size)
        tile_h, tile_w = min(max(tile[0], min_side), height), min(max(tile[1], min_side), width)
        out_device = self.output_device

        ys = tile_starts(height, tile_h, self.overlap)
        xs = tile_starts(width, tile_w, self.overlap)
        tiles = [(b, y, x) for b in range(n) for y in ys for x in xs]
        if self.blend == "gaussian":
            weight = gaussian_importance_map((tile_h, tile_w), self.sigma_scale).to(out_device)
        else:
            weight = torch.ones(tile_h, tile_w, device=out_device)

        weight_sum = torch.zeros(height, width, device=out_device)
        for y in ys:
            for x in xs:
                weight_sum[y : y + tile_h, x : x + tile_w] += weight

        accumulator: Tensor | None = None
        bar = None
        if self.progress:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(tiles), desc="tiles", unit="tile", leave=False)
            except ImportError:  # pragma: no cover - tqdm is a dependency, but stay usable without it
                bar = None
        try:
            for start in range(0, len(tiles), self.batch_size):
                chunk = tiles[start : start + self.batch_size]
                batch = torch.stack([images[b, :, y : y + tile_h, x : x + tile_w] for b, y, x in chunk])
                probs = _probabilities(model, batch.to(run_device), self.tta, min_side).to(out_device)
                if accumulator is None:
                    accumulator = torch.zeros(n, probs.shape[1], height, width, device=out_device)
                for (b, y, x), tile_probs in zip(chunk, probs, strict=True):
                    accumulator[b, :, y : y + tile_h, x : x + tile_w] += tile_probs * weight
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()

        assert accumulator is not None
        accumulator /= weight_sum
        return accumulator
