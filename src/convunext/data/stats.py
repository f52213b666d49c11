"""Per-channel mean and standard deviation of a dataset's images (for normalisation)."""

from __future__ import annotations

from typing import Any

import numpy as np


def compute_mean_std(
    dataset: Any, reduce: int = 1, per_image: bool = False
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation over every pixel of every image of ``dataset``, restricted to the
    field of view where the dataset has one (as the reference code does for DRIVE).

    Args:
        dataset: a file-backed dataset (with ``read_arrays``) or any dataset of :data:`~convunext.data.Sample`.
        reduce: use every ``reduce``-th row and column only (file-backed datasets; JPEGs are decoded at reduced
            size), which makes statistics of large images cheap and changes them in the 3rd-4th decimal.
        per_image: the reference code's convention: the average over images of each image's own mean and std
            (its smaller "std" measures within-image contrast only). Default: pooled over all pixels.

    Returns:
        ``(mean, std)``, tuples of ``C`` floats, values in ``[0, 1]`` units.
    """
    total = None
    total_sq = None
    count = 0
    image_means: list[np.ndarray] = []
    image_stds: list[np.ndarray] = []
    for index in range(len(dataset)):
        if hasattr(dataset, "read_arrays"):
            image, fov = dataset.read_arrays(index, reduce=reduce)
        else:
            sample = dataset[index]
            image = sample["image"].numpy().transpose(1, 2, 0)
            fov = sample["fov"].numpy()
        pixels = image[fov] if fov is not None else image.reshape(-1, image.shape[-1])
        pixels = pixels.astype(np.float64)
        if per_image and len(pixels):
            image_means.append(pixels.mean(axis=0))
            image_stds.append(pixels.std(axis=0))
        if total is None:
            total = np.zeros(pixels.shape[1])
            total_sq = np.zeros(pixels.shape[1])
        total += pixels.sum(axis=0)
        total_sq += (pixels * pixels).sum(axis=0)
        count += pixels.shape[0]
    if not count or total is None or total_sq is None:
        raise ValueError("cannot compute mean/std of an empty dataset")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    if per_image:
        mean, std = np.mean(image_means, axis=0), np.mean(image_stds, axis=0)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)
