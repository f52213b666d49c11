"""A built-in synthetic dataset generated in-process from a seed, so that everything runs with no download.

Two tasks:

* ``"vessels"`` (default) — retina-like colour images: a bright, orange fundus disc on a dark background (the
  field of view), an optic disc, a darker macula, branching vessel trees whose width decreases at every branch,
  an illumination gradient and vignetting, low-frequency texture, a few dark haemorrhage-like spots and bright
  exudate-like spots (distractors), Gaussian blur and noise. The mask is the exact set of pixels whose centre
  lies inside a drawn vessel (a capsule around each centre-line segment); the FOV is the disc.
* ``"glands"`` — H&E-like tiles: pink stroma with scattered nuclei and white gaps, and irregular glands made of
  a purple epithelial rim with nuclei around a pale lumen. The mask is every gland (rim and lumen); no FOV.

Everything is numpy, deterministic per ``(seed, split stream, index)``; a 256x256 image takes a few ms.
A global intensity threshold does not solve either task (see :func:`threshold_baseline`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConvUNeXtError
from .base import DatasetInfo, Sample, check_split, to_sample
from .registry import DatasetSpec, register_dataset

TASKS = ("vessels", "glands")
DEFAULT_NUM_IMAGES = 30
DEFAULT_SIZE = 256
VAL_EVERY = 5  # every 5th image of the training pool is a validation image

# Per-channel mean/std of the default synthetic "trainval" split (num_images=30, size=256, seed=0), inside the FOV
# for "vessels" and over all pixels for "glands"; recomputed by tests/data/test_data_synthetic.py.
SYNTHETIC_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "vessels": ((0.6304, 0.3151, 0.1625), (0.1252, 0.0789, 0.0579)),
    "glands": ((0.8141, 0.5583, 0.7525), (0.1377, 0.1414, 0.1052)),
}

_STREAMS = {"trainval": 0, "test": 1}


# --------------------------------------------------------------------------------------------------- helpers
def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(array: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an ``H x W`` or ``H x W x C`` float array (edge-replicated borders)."""
    if sigma <= 0:
        return array
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    out = array
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        length = out.shape[axis]
        acc = np.zeros_like(out)
        for offset, weight in enumerate(kernel):
            acc += weight * np.take(padded, np.arange(offset, offset + length), axis=axis)
        out = acc
    return out


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """Low-frequency noise in about ``[-1, 1]``: a ``cells x cells`` random grid upsampled bilinearly to
    ``size x size x channels``."""
    grid = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1, channels)).astype(np.float32)
    position = np.linspace(0, cells, size, dtype=np.float32)
    low = np.minimum(position.astype(np.int64), cells - 1)
    frac = (position - low)[:, None]
    rows = grid[low] * (1 - frac[..., None]) + grid[low + 1] * frac[..., None]  # size x (cells+1) x C
    cols = rows[:, low] * (1 - frac.T[..., None]) + rows[:, low + 1] * frac.T[..., None]
    return cols


def render_segments(
    segments: np.ndarray, height: int, width: int, contrast: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise capsules (tapered thick line segments).

    Args:
        segments: ``S x 6`` float array of ``(x0, y0, x1, y1, r0, r1)``: end points in pixel coordinates (pixel
            centres at integers) and the radius at each end (linearly interpolated in between).
        height, width: output size.
        contrast: optional ``S`` per-segment weights for the coverage image.

    Returns:
        ``(mask, coverage)``: ``H x W`` bool, True where the pixel centre lies inside at least one capsule
        (signed distance <= 0); and ``H x W`` float32, the max over segments of ``contrast * clip(0.5 - d, 0, 1)``
        (an anti-aliased drawing whose >= 0.5 level set is the mask when contrast is 1).
    """
    signed = np.full(height * width, np.inf, dtype=np.float32)
    coverage = np.zeros(height * width, dtype=np.float32)
    if len(segments) == 0:
        return signed.reshape(height, width) <= 0, coverage.reshape(height, width)
    segments = np.asarray(segments, dtype=np.float32)
    if contrast is None:
        contrast = np.ones(len(segments), dtype=np.float32)
    x0, y0, x1, y1, r0, r1 = segments.T
    # Group by window size so that big vessels do not force a big window on every segment.
    extent = np.maximum(np.abs(x1 - x0), np.abs(y1 - y0)) + 2 * np.maximum(r0, r1) + 3
    windows = np.ceil(extent).astype(np.int64) | 1
    for window in np.unique(windows):
        chosen = np.nonzero(windows == window)[0]
        offsets = np.arange(window) - window // 2
        cx = np.round((x0[chosen] + x1[chosen]) / 2).astype(np.int64)
        cy = np.round((y0[chosen] + y1[chosen]) / 2).astype(np.int64)
        px = (cx[:, None, None] + offsets[None, None, :]).astype(np.float32)  # S x 1 x K
        py = (cy[:, None, None] + offsets[None, :, None]).astype(np.float32)  # S x K x 1
        sx0, sy0 = x0[chosen][:, None, None], y0[chosen][:, None, None]
        dx, dy = (x1 - x0)[chosen][:, None, None], (y1 - y0)[chosen][:, None, None]
        length2 = np.maximum(dx * dx + dy * dy, 1e-12)
        t = np.clip(((px - sx0) * dx + (py - sy0) * dy) / length2, 0.0, 1.0)
        dist = np.hypot(px - (sx0 + t * dx), py - (sy0 + t * dy))
        radius = r0[chosen][:, None, None] + t * (r1 - r0)[chosen][:, None, None]
        value = dist - radius  # S x K x K
        ix = np.broadcast_to(px, value.shape).astype(np.int64)
        iy = np.broadcast_to(py, value.shape).astype(np.int64)
        inside = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
        flat = (iy * width + ix)[inside]
        np.minimum.at(signed, flat, value[inside])
        cover = contrast[chosen][:, None, None] * np.clip(0.5 - value, 0.0, 1.0)
        np.maximum.at(coverage, flat, cover[inside])
    return signed.reshape(height, width) <= 0, coverage.reshape(height, width)


# --------------------------------------------------------------------------------------------------- vessels
def _grow_trees(
    rng: np.random.Generator, size: int, center: np.ndarray, fov_radius: float, disc: np.ndarray, disc_radius: float
) -> np.ndarray:
    """Centre-line segments ``S x 6`` of branching vessel trees rooted at the optic disc."""
    scale = size / 256.0
    step = 2.0 * scale
    min_radius = 0.45 * scale
    segments: list[tuple[float, float, float, float, float, float]] = []
    # Main vessels leave the disc towards the centre of the fundus, above and below (arcades), plus nasal ones.
    towards = math.atan2(center[1] - disc[1], center[0] - disc[0])
    roots = [
        (towards - rng.uniform(0.6, 1.0), rng.uniform(2.2, 2.8)),
        (towards + rng.uniform(0.6, 1.0), rng.uniform(2.2, 2.8)),
        (towards - rng.uniform(0.1, 0.3), rng.uniform(1.3, 1.8)),
        (towards + math.pi - rng.uniform(0.5, 0.9), rng.uniform(1.4, 2.0)),
        (towards + math.pi + rng.uniform(0.5, 0.9), rng.uniform(1.4, 2.0)),
    ]
    stack = []
    for angle, radius in roots:
        start = disc + 0.5 * disc_radius * np.array([math.cos(angle), math.sin(angle)])
        stack.append((float(start[0]), float(start[1]), angle, radius * scale, 0, 0.0))
    limit = (fov_radius * 0.97) ** 2
    while stack and len(segments) < 4000:
        x, y, theta, radius, depth, bend = stack.pop()
        curvature = 0.0
        until_branch = rng.uniform(8, 22) * scale / step * (1.0 + 0.4 * depth) * 2
        travelled = 0
        while radius >= min_radius:
            curvature = 0.8 * curvature + rng.normal(0.0, 0.025) + bend
            theta += curvature
            nx, ny = x + step * math.cos(theta), y + step * math.sin(theta)
            if (nx - center[0]) ** 2 + (ny - center[1]) ** 2 > limit:
                break
            new_radius = radius * (0.994 if depth == 0 else 0.99)
            segments.append((x, y, nx, ny, radius, new_radius))
            x, y, radius = nx, ny, new_radius
            travelled += 1
            if travelled >= until_branch and depth < 6:
                side = 1.0 if rng.random() < 0.5 else -1.0
                child = radius * rng.uniform(0.5, 0.8)
                stack.append((x, y, theta + side * rng.uniform(0.45, 1.1), child, depth + 1, side * 0.004))
                radius *= rng.uniform(0.82, 0.93)
                theta -= side * rng.uniform(0.05, 0.25)
                until_branch = travelled + rng.uniform(8, 22) * scale / step * (1.0 + 0.4 * depth) * 2
    return np.asarray(segments, dtype=np.float32).reshape(-1, 6)


def generate_vessels(
    size: int = DEFAULT_SIZE, seed: int | np.random.SeedSequence = 0, return_segments: bool = False
) -> dict[str, np.ndarray]:
    """One retina-like image.

    Returns:
        ``{"image": H x W x 3 float32 in [0, 1], "mask": H x W int64 (1 = vessel), "fov": H x W bool}``, plus
        ``"segments"`` (``S x 6``, see :func:`render_segments`) when ``return_segments``.
    """
    rng = np.random.default_rng(seed)
    height = width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    center = np.array([width / 2 + rng.uniform(-0.03, 0.03) * size, height / 2 + rng.uniform(-0.03, 0.03) * size])
    fov_radius = size * rng.uniform(0.44, 0.48)
    radial = np.hypot(xx - center[0], yy - center[1]) / fov_radius
    fov = radial < 1.0

    side = 1.0 if rng.random() < 0.5 else -1.0  # optic disc left or right of centre
    disc_angle = rng.uniform(-0.3, 0.3)
    disc = center + side * fov_radius * rng.uniform(0.45, 0.6) * np.array([math.cos(disc_angle), math.sin(disc_angle)])
    disc_radius = size * rng.uniform(0.06, 0.08)
    macula = center - side * fov_radius * rng.uniform(0.1, 0.2) * np.array([1.0, 0.0])

    # Fundus colour, illumination gradient, vignetting, low-frequency texture.
    base = np.array([rng.uniform(0.62, 0.82), rng.uniform(0.3, 0.42), rng.uniform(0.14, 0.24)], dtype=np.float32)
    direction = rng.uniform(0, 2 * math.pi)
    gradient = ((xx - center[0]) * math.cos(direction) + (yy - center[1]) * math.sin(direction)) / fov_radius
    illumination = 1.0 + rng.uniform(0.15, 0.3) * gradient - rng.uniform(0.2, 0.35) * radial**2
    texture = 1.0 + 0.07 * _smooth_noise(rng, size, 6, 3) + 0.03 * _smooth_noise(rng, size, 24, 3)
    image = base * texture * illumination[..., None]
    disc_dist = np.hypot(xx - disc[0], yy - disc[1]) / disc_radius
    image += np.exp(-(disc_dist**4))[..., None] * np.array([0.3, 0.35, 0.3], dtype=np.float32)
    macula_dist = np.hypot(xx - macula[0], yy - macula[1]) / (1.6 * disc_radius)
    image *= (1.0 - 0.25 * np.exp(-(macula_dist**2)))[..., None]

    # Distractors: dark haemorrhage-like spots and bright exudate-like spots, inside the FOV away from the disc.
    spots = []
    for _ in range(int(rng.integers(2, 7))):
        angle, distance = rng.uniform(0, 2 * math.pi), fov_radius * math.sqrt(rng.uniform(0.02, 0.7))
        px, py = center[0] + distance * math.cos(angle), center[1] + distance * math.sin(angle)
        spots.append((px, py, rng.uniform(1.5, 3.5) * size / 256, rng.uniform(-0.35, 0.25)))
    for px, py, radius, strength in spots:
        spot = np.exp(-(((xx - px) ** 2 + (yy - py) ** 2) / (2 * radius**2)))
        image *= (1.0 + strength * spot)[..., None]

    # Vessels: darker, mostly in green and blue; thin ones fainter.
    segments = _grow_trees(rng, size, center, fov_radius, disc, disc_radius)
    radius_mean = (segments[:, 4] + segments[:, 5]) / 2 if len(segments) else np.zeros(0, np.float32)
    contrast = np.clip(0.35 + 0.65 * radius_mean / (2.5 * size / 256), 0.35, 1.0) * rng.uniform(0.55, 0.8)
    mask, coverage = render_segments(segments, height, width, contrast.astype(np.float32))
    absorb = np.array([0.35, 0.8, 0.6], dtype=np.float32)
    image *= 1.0 - coverage[..., None] * absorb

    image = gaussian_blur(image.astype(np.float32), rng.uniform(0.7, 1.1) * size / 256)
    image += rng.normal(0.0, rng.uniform(0.015, 0.03), image.shape).astype(np.float32)
    outside = ~fov
    image[outside] = 0.02 + rng.normal(0.0, 0.005, (int(outside.sum()), 3)).astype(np.float32)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    result = {"image": image, "mask": (mask & fov).astype(np.int64), "fov": fov}
    if return_segments:
        result["segments"] = segments
    return result


# --------------------------------------------------------------------------------------------------- glands
def generate_glands(size: int = DEFAULT_SIZE, seed: int | np.random.SeedSequence = 0) -> dict[str, np.ndarray]:
    """One H&E-like tile with glands.

    Returns:
        ``{"image": H x W x 3 float32 in [0, 1], "mask": H x W int64 (1 = gland), "fov": H x W bool (all True)}``.
    """
    rng = np.random.default_rng(seed)
    height = width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    stroma = np.array([0.88, 0.58, 0.78], dtype=np.float32) * rng.uniform(0.9, 1.03)
    direction = rng.uniform(0, 2 * math.pi)
    gradient = ((xx - width / 2) * math.cos(direction) + (yy - height / 2) * math.sin(direction)) / size
    stain = 1.0 + rng.uniform(0.15, 0.3) * gradient  # uneven staining
    image = stroma * (1.0 + 0.12 * _smooth_noise(rng, size, 5, 3) + 0.06 * _smooth_noise(rng, size, 40, 3))
    mask = np.zeros((height, width), dtype=bool)
    rim_colour = np.array([0.66, 0.4, 0.7], dtype=np.float32)
    lumen_colour = np.array([0.96, 0.9, 0.95], dtype=np.float32)
    nucleus_colour = np.array([0.3, 0.16, 0.45], dtype=np.float32)

    centers: list[tuple[float, float, float]] = []
    for _ in range(200):
        if len(centers) >= 7:
            break
        radius = size * rng.uniform(0.07, 0.16)
        cx, cy = rng.uniform(-0.05, 1.05) * width, rng.uniform(-0.05, 1.05) * height
        if all(math.hypot(cx - ox, cy - oy) > 1.15 * (radius + orad) for ox, oy, orad in centers):
            centers.append((cx, cy, radius))
    nuclei: list[tuple[float, float]] = []
    for cx, cy, radius in centers:
        phi = np.arctan2(yy - cy, xx - cx)
        shape = np.ones_like(phi)
        for k in (2, 3, 4):
            shape += rng.uniform(0.0, 0.12 / k * 2) * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
        rho = np.hypot(xx - cx, yy - cy) / (radius * shape)
        gland = rho <= 1.0
        rim = rng.uniform(0.2, 0.4)
        lumen = rho < 1.0 - rim
        mask |= gland
        image[gland & ~lumen] = rim_colour * rng.uniform(0.9, 1.1)
        image[lumen] = lumen_colour * rng.uniform(0.95, 1.02) if rng.random() < 0.7 else stroma * 1.05
        for angle in np.linspace(0, 2 * math.pi, int(2 * math.pi * radius / (5 * size / 256)), endpoint=False):
            r = radius * (1.0 - rim * rng.uniform(0.55, 0.85))
            nuclei.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    # Scattered stroma nuclei and white gaps (distractors: dark like the rim, bright like a lumen).
    for _ in range(int(rng.integers(40, 80) * (size / 256) ** 2)):
        nuclei.append((rng.uniform(0, width), rng.uniform(0, height)))
    for _ in range(int(rng.integers(3, 8))):
        gx, gy, gr = rng.uniform(0, width), rng.uniform(0, height), size * rng.uniform(0.02, 0.08)
        gap = ((xx - gx) / gr) ** 2 + ((yy - gy) / (gr * rng.uniform(0.4, 1.0))) ** 2 < 1.0
        image[gap & ~mask] = lumen_colour
    nuclear = np.zeros((height, width), dtype=np.float32)
    nucleus_radius = 1.8 * size / 256
    for nx, ny in nuclei:
        x0, x1 = max(0, int(nx - 4 * nucleus_radius)), min(width, int(nx + 4 * nucleus_radius) + 1)
        y0, y1 = max(0, int(ny - 4 * nucleus_radius)), min(height, int(ny + 4 * nucleus_radius) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        d2 = (xx[y0:y1, x0:x1] - nx) ** 2 + (yy[y0:y1, x0:x1] - ny) ** 2
        nuclear[y0:y1, x0:x1] = np.maximum(nuclear[y0:y1, x0:x1], np.exp(-d2 / (2 * nucleus_radius**2)))
    image = image * (1 - nuclear[..., None]) + nucleus_colour * nuclear[..., None]
    image *= stain[..., None]
    image = gaussian_blur(image.astype(np.float32), 0.8 * size / 256)
    image += rng.normal(0.0, 0.03, image.shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    return {"image": image, "mask": mask.astype(np.int64), "fov": np.ones((height, width), dtype=bool)}


# --------------------------------------------------------------------------------------------------- dataset
def split_indices(split: str, num_images: int = DEFAULT_NUM_IMAGES, num_test: int | None = None) -> list[int]:
    """Image indices of a split. ``num_images`` is the size of the training pool ("trainval"); every
    :data:`VAL_EVERY`-th pool image (indices 4, 9, 14, ...) is "val" and the rest "train". "test" images come
    from a separate stream: ``num_test`` of them (default ``max(2, num_images // 3)``)."""
    check_split(split)
    if num_images < 2:
        raise ConvUNeXtError(f"synthetic dataset: num_images must be at least 2, got {num_images}")
    pool = list(range(num_images))
    if split == "trainval":
        return pool
    if split == "val":
        return [i for i in pool if i % VAL_EVERY == VAL_EVERY - 1] or [pool[-1]]
    if split == "train":
        val = set(split_indices("val", num_images))
        return [i for i in pool if i not in val]
    count = max(2, num_images // 3) if num_test is None else num_test
    if count < 1:
        raise ConvUNeXtError(f"synthetic dataset: num_test must be at least 1, got {num_test}")
    return list(range(count))


class SyntheticDataset(Dataset):
    """The synthetic dataset (see module docstring); items are generated on first access and cached.

    Args:
        split: ``"train"``, ``"val"``, ``"test"`` or ``"trainval"``.
        num_images: size of the training pool ("trainval"); "val" is every fifth pool image, "train" the rest.
        size: side of the square images.
        seed: the dataset's seed; image ``i`` of a stream is generated from ``SeedSequence([seed, stream, i])``.
        task: ``"vessels"`` or ``"glands"``.
        num_test: number of test images (default ``max(2, num_images // 3)``).
        cache: keep generated samples in memory.
    """

    def __init__(
        self,
        split: str = "train",
        num_images: int = DEFAULT_NUM_IMAGES,
        size: int = DEFAULT_SIZE,
        seed: int = 0,
        task: str = "vessels",
        num_test: int | None = None,
        cache: bool = True,
    ) -> None:
        check_task(task)
        if size < 32:
            raise ConvUNeXtError(f"synthetic dataset: size must be at least 32, got {size}")
        self.split = check_split(split)
        self.num_images, self.size, self.seed, self.task = int(num_images), int(size), int(seed), task
        self.indices = split_indices(split, self.num_images, num_test)
        self.stream = _STREAMS["test" if split == "test" else "trainval"]
        self.info = synthetic_info(task)
        self.cache = cache
        self._cache: dict[int, Sample] = {}

    @property
    def names(self) -> list[str]:
        """Item names in dataset order."""
        prefix = "test" if self.stream == 1 else "train"
        return [f"synthetic_{self.task}_{prefix}_{index:04d}" for index in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def generate(self, position: int) -> dict[str, np.ndarray]:
        """Numpy arrays of item ``position`` (see :func:`generate_vessels` / :func:`generate_glands`)."""
        seed = np.random.SeedSequence([self.seed, self.stream, self.indices[position]])
        if self.task == "vessels":
            return generate_vessels(self.size, seed)
        return generate_glands(self.size, seed)

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        if index in self._cache:
            sample = self._cache[index]
            return {key: value.clone() if torch.is_tensor(value) else value for key, value in sample.items()}
        arrays = self.generate(index)
        sample = to_sample(arrays["image"], arrays["mask"], arrays["fov"], self.names[index])
        if self.cache:
            self._cache[index] = {k: v.clone() if torch.is_tensor(v) else v for k, v in sample.items()}
        return sample

    def __repr__(self) -> str:
        return (
            f"SyntheticDataset(split={self.split!r}, task={self.task!r}, items={len(self)}, size={self.size}, "
            f"seed={self.seed})"
        )


def check_task(task: str) -> str:
    """Return ``task`` if it is one of :data:`TASKS`, else raise a one-line error."""
    if task not in TASKS:
        raise ConvUNeXtError(f"synthetic dataset: unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return task


def synthetic_info(task: str = "vessels") -> DatasetInfo:
    """:class:`DatasetInfo` of the synthetic dataset for ``task``."""
    mean, std = SYNTHETIC_STATS[check_task(task)]
    names = ["background", "vessel"] if task == "vessels" else ["background", "gland"]
    has_fov = task == "vessels"
    return DatasetInfo(name="synthetic", class_names=names, in_channels=3, mean=mean, std=std, has_fov=has_fov)


# --------------------------------------------------------------------------------------------------- baseline
def threshold_baseline(dataset: Any, num_thresholds: int = 101, channel: str = "gray") -> dict[str, float]:
    """How far a plain intensity threshold gets: the Dice of the best *global* threshold, chosen with the
    labels (an oracle, so an upper bound for any threshold rule), and of the best threshold per image.

    Dice is the per-image foreground Dice averaged over images (SPEC section 6), inside the FOV; both polarities
    (foreground darker or brighter than the threshold) are tried and the better kept.

    Args:
        dataset: any dataset returning :data:`Sample` items with binary masks.
        num_thresholds: thresholds tried, evenly spaced over ``[0, 1]``.
        channel: ``"gray"`` (mean of the channels), ``"green"`` (channel 1, the vessel-contrast channel of fundus
            images) or ``"best"`` (the better of all single channels and gray).

    Returns:
        ``{"global_dice", "global_threshold", "global_polarity" (+1: foreground brighter, -1: darker),
        "per_image_dice", "channel"}`` — for ``"best"``, the figures of the best channel.
    """
    thresholds = np.linspace(0.0, 1.0, num_thresholds, dtype=np.float32)
    items = [dataset[i] for i in range(len(dataset))]
    in_channels = int(items[0]["image"].shape[0])
    if channel == "best":
        options = ["gray"] + (["red", "green", "blue"] if in_channels == 3 else [])
        results = [threshold_baseline_items(items, thresholds, name) for name in options]
        return max(results, key=lambda result: result["global_dice"])
    return threshold_baseline_items(items, thresholds, channel)


def threshold_baseline_items(items: list[Sample], thresholds: np.ndarray, channel: str) -> dict[str, Any]:
    """:func:`threshold_baseline` on already loaded samples, one channel."""
    channels = {"red": 0, "green": 1, "blue": 2}
    # scores[p, i, t]: Dice of image i with polarity p at threshold t
    scores = np.zeros((2, len(items), len(thresholds)), dtype=np.float64)
    for index, item in enumerate(items):
        image = item["image"].numpy()
        if channel == "gray":
            values = image.mean(axis=0)
        elif channel in channels and image.shape[0] == 3:
            values = image[channels[channel]]
        else:
            raise ConvUNeXtError(f"threshold baseline: unknown channel {channel!r}")
        mask = item["mask"].numpy()
        valid = item["fov"].numpy() & (mask != 255)
        values, target = values[valid], mask[valid] > 0
        order = np.sort(values)
        fg_sorted = np.sort(values[target])
        count_le = np.searchsorted(order, thresholds, side="right")  # pixels <= t
        fg_le = np.searchsorted(fg_sorted, thresholds, side="right")
        fg_total, total = len(fg_sorted), len(order)
        for polarity, (predicted, true_positive) in enumerate(
            ((count_le, fg_le), (total - count_le, fg_total - fg_le))  # darker: value <= t ; brighter: value > t
        ):
            denominator = predicted + fg_total
            scores[polarity, index] = np.where(denominator > 0, 2.0 * true_positive / np.maximum(denominator, 1), 1.0)
    mean_scores = scores.mean(axis=1)  # 2 x T
    polarity, best = np.unravel_index(np.argmax(mean_scores), mean_scores.shape)
    per_image = scores.max(axis=2).max(axis=0).mean()
    return {
        "channel": channel,
        "global_dice": float(mean_scores[polarity, best]),
        "global_threshold": float(thresholds[best]),
        "global_polarity": -1 if polarity == 0 else 1,
        "per_image_dice": float(per_image),
    }


register_dataset(
    DatasetSpec(
        name="synthetic",
        title="Synthetic",
        description="generated in-process from a seed, no download: retina-like vessels (default) or H&E-like glands",
        reader=SyntheticDataset,
        info=synthetic_info,
        preset="synthetic",
    )
)
