"""Volumes with known answers for the volume path's tests: label volumes whose image is a staircase of intensities
(class ``c`` at ``c * STEP``), and a model that reads the class back from the intensity exactly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from convunext.data.volumes import IntensityNormalization, Volume, VolumeSettings

STEP = 100.0


def oblique_affine(spacing: Sequence[float], degrees: float = 15.0) -> np.ndarray:
    """A 4x4 affine with voxel sizes ``spacing`` whose axes are rotated by ``degrees`` about the world's z axis."""
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = (-12.5, 30.0, 7.25)
    return affine


def staircase_case(
    shape: Sequence[int] = (20, 14, 9), spacing: Sequence[float] = (1.0, 3.0, 1.0), seed: int = 0
) -> tuple[Volume, Volume]:
    """An image and label volume: two boxes (classes 1 and 2) at random places, image = label * STEP (no noise)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(tuple(shape), dtype=np.uint8)
    for value in (1, 2):
        size = [max(2, side // 3) for side in shape]
        start = [int(rng.integers(0, side - extent)) for side, extent in zip(shape, size)]
        labels[tuple(slice(s, s + e) for s, e in zip(start, size))] = value
    affine = oblique_affine(spacing)
    return Volume(labels.astype(np.float32) * STEP, affine), Volume(labels, affine)


def fixed_settings(slice_axis: int, context: int = 1, classes: int = 3) -> VolumeSettings:
    """Settings whose normalisation maps intensity ``c * STEP`` to ``c`` (a window with mean 0, std STEP)."""
    top = (classes - 1) * STEP
    normalization = IntensityNormalization("window", low=0.0, high=top, mean=0.0, std=STEP)
    return VolumeSettings(slice_axis, context, ("CT",), (normalization,), (1.0, 1.0, 1.0))


class IntensityOracle(nn.Module):
    """Logits ``-(x - c)^2`` for class ``c`` from the centre slice of a ``context``-slice input (normalised so that
    class ``c`` reads ``c``): the argmax is the class of the voxel."""

    def __init__(self, classes: int = 3, context: int = 1) -> None:
        super().__init__()
        self.classes, self.centre = classes, context // 2
        self.anchor = nn.Parameter(torch.zeros(()))  # a parameter, so the inferer finds a device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        centre = images[:, self.centre : self.centre + 1]
        targets = torch.arange(self.classes, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return -((centre - targets) ** 2) * 10 + self.anchor
