"""Class probabilities for whole images, tiled with overlap and Gaussian blending when they are large.

``sliding_window_inference`` cuts each image into tiles of ``tile_size`` (raised to the model's minimum side where
the image allows it, and clipped to the image in a dimension where the image is smaller: that dimension is then
processed whole), placed on a grid whose steps are at most ``tile * (1 - overlap)`` and spread evenly so the last
tile ends exactly at the image border. Every pixel is covered. Each tile's logits go through a softmax over classes;
the tile probabilities are averaged with per-pixel weights — a separable Gaussian centred on the tile with standard
deviation ``sigma_scale * tile`` (nnU-Net's importance map), clamped below at ``1e-4`` of its peak so every weight
is positive — or constant weights. Accumulators (weighted sum N x K x H x W and one H x W weight map shared by all
images) live on ``output_device``, so only ``batch_size`` tiles are on the compute device at a time and a 3504 x
2336 image needs about ``(K + 1) * 4 * H * W`` bytes of host memory plus the input.

Small inputs. The registry models halve the resolution four times, so they need every side >= 16 px
(:data:`MIN_INPUT_SIZE`); an exported ONNX graph may need more (its ``min_size`` attribute, 64 px for ConvUNeXt).
Every forward pass here — whole image or tile, each TTA flip — pads a smaller input at the bottom and right with 0
(in normalised space, the dataset's mean colour, as ``pad_collate`` pads training batches) up to that size and crops
the probabilities back, so images of any size, down to 1 x 1, get a prediction of their own size (deterministic;
pixels near the padding see it through the model's receptive field).

Flip test-time augmentation (``tta_flips=True``) averages the softmax probabilities of the tile, the tile flipped
left-right and the tile flipped top-bottom (each flipped back), before blending: 3 forward passes.

The model is switched to eval mode during the call (its previous mode is restored afterwards) and runs under
``torch.inference_mode``. If it returns a list/tuple (deep supervision) the last element is used; a dict uses its
``"out"`` entry.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.modules import eval_mode, module_device

__all__ = [
    "MIN_INPUT_SIZE",
    "check_window_settings",
    "gaussian_importance_map",
    "predict_probabilities",
    "sliding_window_inference",
    "tile_starts",
]

MIN_GAUSSIAN_WEIGHT = 1e-4
MIN_INPUT_SIZE = 16
"""Smallest side every registry model accepts (four halvings); smaller inputs are padded up to it."""


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        pair = (value, value)
    else:
        if len(value) != 2:
            raise ValueError(f"tile_size must be an int or (height, width), got {value!r}")
        pair = (int(value[0]), int(value[1]))
    if min(pair) < 1:
        raise ValueError(f"tile_size must be positive, got {value!r}")
    return pair


def check_window_settings(tile_size: int | tuple[int, int] | list[int] | None, overlap: float, batch_size: int) -> None:
    """Raise ``ValueError`` for a non-positive tile side, an overlap outside [0, 1) (NaN included) or a
    ``batch_size`` under 1: checked up front, since the overlap is only used once an image needs several tiles."""
    if tile_size is not None:
        _pair(tile_size)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


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


def _probabilities(model: nn.Module, batch: Tensor, tta_flips: bool, min_side: int) -> Tensor:
    """Softmax probabilities N x K x h x w for a batch of tiles, optionally flip-TTA averaged.

    The forward passes run under ``torch.inference_mode``; the result is cloned out of it so callers get an
    ordinary tensor they may modify in place.
    """
    with torch.inference_mode():
        probs = _softmax(model, batch, min_side)
        if tta_flips:
            for dim in (-1, -2):
                probs = probs + _softmax(model, batch.flip(dim), min_side).flip(dim)
            probs = probs / 3.0
    return probs.clone()


def _check_image(image: Tensor | np.ndarray) -> tuple[Tensor, bool]:
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, Tensor):
        raise TypeError(f"image must be a tensor or numpy array, got {type(image).__name__}")
    squeeze = image.dim() == 3
    if squeeze:
        image = image.unsqueeze(0)
    if image.dim() != 4:
        raise ValueError(f"image must be N x C x H x W (or C x H x W), got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        image = image.float()
    return image, squeeze


def sliding_window_inference(
    model: nn.Module,
    image: Tensor,
    tile_size: int | tuple[int, int] = 480,
    overlap: float = 0.25,
    blend: Literal["gaussian", "constant"] = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 4,
    tta_flips: bool = False,
    device: torch.device | str | None = None,
    output_device: torch.device | str = "cpu",
    progress: bool = False,
    min_size: int = MIN_INPUT_SIZE,
) -> Tensor:
    """Blended softmax probabilities of ``model`` over ``image``, tile by tile.

    Args:
        model: maps N x C x h x w to logits N x K x h x w (any h, w down to the tile size).
        image: N x C x H x W float tensor (C x H x W also accepted; the batch dim is then dropped on return),
            on any device; tiles are copied to ``device`` one batch at a time.
        tile_size: tile side, or (height, width); raised to the minimum side (``min_size``) and then clipped to
            the image where the image is smaller.
        overlap: minimum fraction of a tile shared with its neighbour, in [0, 1).
        blend: ``"gaussian"`` (centre-weighted, nnU-Net style) or ``"constant"`` (plain average).
        sigma_scale: Gaussian sigma as a fraction of the tile side.
        batch_size: tiles per forward pass.
        tta_flips: average identity, left-right flip and top-bottom flip (3 passes per tile).
        device: where the model runs; default the device of the model's parameters.
        output_device: where the accumulators and the result live (default CPU: bounded GPU memory).
        progress: show a tqdm bar over tile batches (if tqdm is installed).
        min_size: smallest side the model accepts (or its ``min_size`` attribute, when larger); smaller
            tiles are padded up to it (see the module docstring).

    Returns:
        N x K x H x W float32 probabilities on ``output_device`` (sum to 1 over K at every pixel).
    """
    image, squeeze = _check_image(image)
    if blend not in ("gaussian", "constant"):
        raise ValueError(f"blend must be 'gaussian' or 'constant', got {blend!r}")
    check_window_settings(tile_size, overlap, batch_size)
    n, _, height, width = image.shape
    tile_h, tile_w = _pair(tile_size)
    min_side = _min_side(model, min_size)
    tile_h, tile_w = min(max(tile_h, min_side), height), min(max(tile_w, min_side), width)
    run_device = torch.device(device) if device is not None else module_device(model, image.device)
    out_device = torch.device(output_device)

    ys = tile_starts(height, tile_h, overlap)
    xs = tile_starts(width, tile_w, overlap)
    tiles = [(b, y, x) for b in range(n) for y in ys for x in xs]
    if blend == "gaussian":
        weight = gaussian_importance_map((tile_h, tile_w), sigma_scale).to(out_device)
    else:
        weight = torch.ones(tile_h, tile_w, device=out_device)

    weight_sum = torch.zeros(height, width, device=out_device)
    for y in ys:
        for x in xs:
            weight_sum[y : y + tile_h, x : x + tile_w] += weight

    accumulator: Tensor | None = None
    batches = range(0, len(tiles), batch_size)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(tiles), desc="tiles", unit="tile", leave=False)
        except ImportError:  # pragma: no cover - tqdm is a dependency, but stay usable without it
            bar = None

    with eval_mode(model):
        try:
            for start in batches:
                chunk = tiles[start : start + batch_size]
                batch = torch.stack([image[b, :, y : y + tile_h, x : x + tile_w] for b, y, x in chunk])
                probs = _probabilities(model, batch.to(run_device), tta_flips, min_side).to(out_device)
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
    return accumulator[0] if squeeze else accumulator


def predict_probabilities(
    model: nn.Module,
    image: Tensor | np.ndarray,
    tile_size: int | tuple[int, int] | None = None,
    overlap: float = 0.25,
    blend: Literal["gaussian", "constant"] = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 4,
    tta_flips: bool = False,
    device: torch.device | str | None = None,
    output_device: torch.device | str = "cpu",
    progress: bool = False,
    min_size: int = MIN_INPUT_SIZE,
) -> Tensor:
    """Softmax probabilities for whole images: one pass when they fit, sliding windows otherwise.

    When ``tile_size`` is None, or the image fits in one tile (H <= tile_h and W <= tile_w), the model sees
    the whole image (``batch_size`` images per pass, optional flip TTA); otherwise this is
    ``sliding_window_inference`` with the same arguments. Either way an image or tile with a side below
    ``min_size`` (or the model's ``min_size`` attribute) is padded for the forward pass and its probabilities
    cropped back: the result always has the image's size.

    Args:
        model: maps N x C x H x W to logits N x K x H x W.
        image: N x C x H x W (or C x H x W) tensor or numpy array; integer arrays are cast to float32
            as they are (normalise first).

    Returns:
        N x K x H x W (or K x H x W) float32 probabilities on ``output_device``.
    """
    image, squeeze = _check_image(image)
    check_window_settings(tile_size, overlap, batch_size)
    height, width = image.shape[-2:]
    if tile_size is not None:
        tile_h, tile_w = _pair(tile_size)
        if height > tile_h or width > tile_w:
            result = sliding_window_inference(
                model,
                image,
                tile_size=(tile_h, tile_w),
                overlap=overlap,
                blend=blend,
                sigma_scale=sigma_scale,
                batch_size=batch_size,
                tta_flips=tta_flips,
                device=device,
                output_device=output_device,
                progress=progress,
                min_size=min_size,
            )
            return result[0] if squeeze else result
    run_device = torch.device(device) if device is not None else module_device(model, image.device)
    out_device = torch.device(output_device)
    outputs = []
    with eval_mode(model):
        for start in range(0, image.shape[0], batch_size):
            batch = image[start : start + batch_size].to(run_device)
            outputs.append(_probabilities(model, batch, tta_flips, _min_side(model, min_size)).to(out_device))
    result = torch.cat(outputs)
    return result[0] if squeeze else result
