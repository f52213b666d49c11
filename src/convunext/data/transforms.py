"""Paired augmentation and normalisation on tensors (SPEC section 5), a dataset wrapper, and a padding collate.

All operations are plain torch ops, so they run in DataLoader workers and on GPU tensors alike. Randomness comes
from a ``torch.Generator`` (CPU) drawn as a handful of scalars per sample, so results do not depend on the device.

Reproducibility: :class:`TransformedDataset` with a ``seed`` seeds a fresh generator from ``(seed, epoch, index)``
for every item, so an epoch's augmentations are identical whatever the number of workers or the order in which
items are fetched; call :meth:`TransformedDataset.set_epoch` before each epoch (with non-persistent workers).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .base import Sample
from .io import IGNORE_INDEX


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(image - mean) / std`` per channel of a ``C x H x W`` (or ``N x C x H x W``) float tensor."""
    shape = (-1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=image.dtype, device=image.device).reshape(shape)
    std_t = torch.as_tensor(std, dtype=image.dtype, device=image.device).reshape(shape)
    if mean_t.numel() != image.shape[-3]:
        raise ValueError(f"normalisation has {mean_t.numel()} channels but the image has {image.shape[-3]}")
    return (image - mean_t) / std_t


def denormalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Inverse of :func:`normalize`."""
    mean_t = torch.as_tensor(mean, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
    return image * std_t + mean_t


def nearest_resize(array: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest-neighbour resize of the last two axes of any-dtype tensor (``... x H x W``), pixel-centre aligned
    (like ``mode="nearest-exact"``); used for masks and FOVs so that class ids are never blended."""
    in_h, in_w = array.shape[-2:]
    rows = ((torch.arange(height, device=array.device, dtype=torch.float64) + 0.5) * in_h / height).long()
    cols = ((torch.arange(width, device=array.device, dtype=torch.float64) + 0.5) * in_w / width).long()
    rows = rows.clamp_(max=in_h - 1)
    cols = cols.clamp_(max=in_w - 1)
    return array[..., rows, :][..., cols]


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator | None, high: int) -> int:
    """Uniform integer in ``[0, high]``."""
    return int(torch.randint(0, high + 1, (), generator=generator))


class TrainTransform:
    """Training augmentation of a :data:`~convunext.data.Sample`: random resize, random crop, flips, normalisation.

    In order (as the reference code): pixels outside the FOV get the ignore value in the mask; the image is
    resized so that its short side becomes ``s * base`` with ``s ~ U(scale_range)`` (``base`` = ``base_size``, or
    the image's own short side when None; bilinear for the image, nearest for mask and FOV); a random
    ``crop_size x crop_size`` window is taken, padding first when the image is smaller (image with 0, mask with
    ``ignore_index``, FOV with False); horizontal and vertical flips with probability 0.5 each; finally the image
    is normalised with ``mean``/``std``.

    Args:
        crop_size: side of the output crop (an int, or ``(height, width)``); None keeps the resized image whole.
        mean: per-channel normalisation mean (``DatasetInfo.mean``), one value per image channel.
        std: per-channel normalisation standard deviation (``DatasetInfo.std``).
        scale_range: range of the random resize factor; ``(1.0, 1.0)`` disables resizing.
        base_size: short side that the factor multiplies (the reference code uses 512); None = the image's own.
        hflip: enable random horizontal flips.
        vflip: enable random vertical flips.
        ignore_index: mask value for padded and out-of-FOV pixels.
        seed: seed of the transform's own generator, used when ``__call__`` gets no generator; None uses
            torch's global RNG (which DataLoader seeds per worker).
        image_interpolation: ``"bilinear"`` (default) or ``"nearest"`` for the image resize.

    Call: ``transform(sample, generator=None) -> Sample`` with ``image`` ``C x h x w`` normalised float,
    ``mask`` ``h x w`` int64 (``ignore_index`` outside the FOV and in padding), ``fov`` ``h x w`` bool and
    ``name`` unchanged. Tensors stay on their device.
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int] | None,
        mean: Sequence[float],
        std: Sequence[float],
        scale_range: tuple[float, float] = (0.8, 1.5),
        base_size: int | None = None,
        hflip: bool = True,
        vflip: bool = True,
        ignore_index: int = IGNORE_INDEX,
        seed: int | None = None,
        image_interpolation: str = "bilinear",
    ) -> None:
        if crop_size is None:
            self.crop_size = None
        elif isinstance(crop_size, int):
            self.crop_size = (crop_size, crop_size)
        else:
            self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        if self.crop_size is not None and min(self.crop_size) < 1:
            raise ValueError(f"crop size must be positive, got {crop_size}")
        low, high = float(scale_range[0]), float(scale_range[1])
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        if image_interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"image_interpolation must be 'bilinear' or 'nearest', got {image_interpolation!r}")
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.scale_range = (low, high)
        self.base_size = base_size
        self.hflip, self.vflip = hflip, vflip
        self.ignore_index = ignore_index
        self.image_interpolation = image_interpolation
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        generator = generator if generator is not None else self.generator
        image, mask, fov = sample["image"], sample["mask"], sample["fov"]
        if not image.is_floating_point():
            image = image.float()
        mask = mask.masked_fill(~fov, self.ignore_index)

        # 1. random resize of the short side
        low, high = self.scale_range
        height, width = image.shape[-2:]
        if (low, high) != (1.0, 1.0) or self.base_size is not None:
            factor = _uniform(generator, low, high)
            short = min(height, width)
            target = factor * (self.base_size if self.base_size is not None else short)
            new_h = max(1, int(round(height * target / short)))
            new_w = max(1, int(round(width * target / short)))
            if (new_h, new_w) != (height, width):
                image = self._resize_image(image, new_h, new_w)
                mask = nearest_resize(mask, new_h, new_w)
                fov = nearest_resize(fov, new_h, new_w)
                height, width = new_h, new_w

        # 2. random crop, padding first when needed (image 0, mask ignore, fov False)
        if self.crop_size is not None:
            crop_h, crop_w = self.crop_size
            pad_h, pad_w = max(0, crop_h - height), max(0, crop_w - width)
            if pad_h or pad_w:
                image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
                mask = F.pad(mask, (0, pad_w, 0, pad_h), value=self.ignore_index)
                fov = F.pad(fov, (0, pad_w, 0, pad_h), value=False)
                height, width = height + pad_h, width + pad_w
            top, left = _randint(generator, height - crop_h), _randint(generator, width - crop_w)
            image = image[..., top : top + crop_h, left : left + crop_w]
            mask = mask[..., top : top + crop_h, left : left + crop_w]
            fov = fov[..., top : top + crop_h, left : left + crop_w]

        # 3. flips
        flip_h = self.hflip and float(torch.rand((), generator=generator)) < 0.5
        flip_v = self.vflip and float(torch.rand((), generator=generator)) < 0.5
        dims = ([-1] if flip_h else []) + ([-2] if flip_v else [])
        if dims:
            image, mask, fov = image.flip(dims), mask.flip(dims), fov.flip(dims)

        # 4. normalisation
        image = normalize(image, self.mean, self.std)
        out = dict(sample)
        out.update(image=image.contiguous(), mask=mask.contiguous(), fov=fov.contiguous())
        return out

    def _resize_image(self, image: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if self.image_interpolation == "nearest":
            return nearest_resize(image, height, width)
        downscale = height < image.shape[-2] or width < image.shape[-1]
        batch = image.unsqueeze(0)
        resized = F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False, antialias=downscale)
        return resized.squeeze(0)

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop_size={self.crop_size}, scale_range={self.scale_range}, base_size={self.base_size}, "
            f"hflip={self.hflip}, vflip={self.vflip}, mean={self.mean}, std={self.std})"
        )


class EvalTransform:
    """Evaluation transform: normalisation only; mask and FOV untouched unless ``mask_outside_fov``.

    Args:
        mean: per-channel normalisation mean, one value per image channel.
        std: per-channel normalisation standard deviation.
        mask_outside_fov: set the mask to ``ignore_index`` outside the FOV (metrics usually take the FOV apart).
        ignore_index: the ignore value.

    Call: ``transform(sample, generator=None) -> Sample`` (``generator`` accepted for symmetry and unused).
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        mask_outside_fov: bool = False,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.mask_outside_fov = mask_outside_fov
        self.ignore_index = ignore_index

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        out = dict(sample)
        out["image"] = normalize(sample["image"].float(), self.mean, self.std)
        if self.mask_outside_fov:
            out["mask"] = sample["mask"].masked_fill(~sample["fov"], self.ignore_index)
        return out

    def __repr__(self) -> str:
        return f"EvalTransform(mean={self.mean}, std={self.std}, mask_outside_fov={self.mask_outside_fov})"


def _takes_generator(transform: Any) -> bool:
    if transform is None:
        return False
    try:
        return "generator" in inspect.signature(transform).parameters
    except (TypeError, ValueError):
        return False


def _mix(seed: int, epoch: int, index: int) -> int:
    """A 63-bit generator seed from ``(seed, epoch, index)`` (splitmix64-style mixing, stable across runs)."""
    value = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    value ^= value >> 31
    value = (value * 0xD6E8FEB86659FD93) & (2**64 - 1)
    value ^= value >> 32
    return value & (2**63 - 1)


class TransformedDataset(Dataset):
    """Apply ``transform`` to every item of ``dataset`` (keeps ``.info``).

    Args:
        dataset: a dataset of :data:`~convunext.data.Sample`.
        transform: a callable ``(sample, generator=None) -> Sample`` (or one taking the sample only); None = identity.
        seed: when given, item ``i`` of epoch ``e`` is transformed with a fresh ``torch.Generator`` seeded from
            ``(seed, e, i)``: reproducible whatever the number of DataLoader workers. When None the transform
            uses its own generator or torch's global RNG.
    """

    def __init__(self, dataset: Dataset, transform: Any | None, seed: int | None = None) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.info = getattr(dataset, "info", None)
        self._takes_generator = _takes_generator(transform)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (only meaningful with a ``seed``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        sample = self.dataset[index]
        if self.transform is None:
            return sample
        if self.seed is None:
            return self.transform(sample)
        if not self._takes_generator:
            return self.transform(sample)
        generator = torch.Generator().manual_seed(_mix(self.seed, self.epoch, index))
        return self.transform(sample, generator=generator)

    def __repr__(self) -> str:
        return f"TransformedDataset({self.dataset!r}, {self.transform!r}, seed={self.seed})"


def pad_collate(batch: Sequence[Sample], size_divisor: int = 1) -> dict[str, Any]:
    """Stack samples of different sizes into a batch, padding at the bottom and right.

    Args:
        batch: samples from a dataset (``image`` ``C x H_i x W_i``, ``mask`` and ``fov`` ``H_i x W_i``).
        size_divisor: round the padded size up to a multiple of this (e.g. 16 for a 4-level UNet); 1 = none.

    Returns:
        ``{"image": N x C x H x W float (pad 0), "mask": N x H x W int64 (pad 255), "fov": N x H x W bool
        (pad False), "name": list of N str, "size": list of N (H_i, W_i)}`` plus any other keys as lists.
    """
    if not batch:
        raise ValueError("pad_collate got an empty batch")
    height = max(int(sample["image"].shape[-2]) for sample in batch)
    width = max(int(sample["image"].shape[-1]) for sample in batch)
    if size_divisor > 1:
        height = math.ceil(height / size_divisor) * size_divisor
        width = math.ceil(width / size_divisor) * size_divisor
    first = batch[0]
    channels = int(first["image"].shape[0])
    images = first["image"].new_zeros((len(batch), channels, height, width))
    masks = first["mask"].new_full((len(batch), height, width), IGNORE_INDEX)
    fovs = first["fov"].new_zeros((len(batch), height, width))
    for i, sample in enumerate(batch):
        h, w = sample["image"].shape[-2:]
        images[i, :, :h, :w] = sample["image"]
        masks[i, :h, :w] = sample["mask"]
        fovs[i, :h, :w] = sample["fov"]
    out: dict[str, Any] = {
        "image": images,
        "mask": masks,
        "fov": fovs,
        "name": [sample["name"] for sample in batch],
        "size": [tuple(int(v) for v in sample["image"].shape[-2:]) for sample in batch],
    }
    for key in first:
        if key not in out:
            out[key] = [sample[key] for sample in batch]
    return out
