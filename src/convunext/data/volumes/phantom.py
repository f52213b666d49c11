"""Built-in synthetic CT/MR volumes, so that the volume pipeline runs and is tested with no download.

A case is a body (an elliptic cylinder along ``k``, soft tissue) in air holding two organ-like ellipsoids, with
Gaussian noise, on an anisotropic grid that may be oblique in the world. Sizes are drawn in millimetres, so the
ellipsoids are the same shape in world space whatever the voxel spacing. Everything is numpy, deterministic per
seed. :func:`write_phantom_dataset` writes cases in the Medical Segmentation Decathlon layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ... import __version__
from ...errors import ConvUNeXtError
from ...utils.io import atomic_write_json
from .volume import Volume, write_nifti

MODALITIES = ("CT", "MR")
PHANTOM_LABELS = {"0": "background", "1": "organ", "2": "lesion"}
"""Class names of the phantom's labels (dataset.json's ``labels``)."""

# Mean intensity of air/background, body, class 1, class 2, and the noise's standard deviation.
_CT_HU = (-1000.0, 40.0, 80.0, 150.0, 20.0)
_MR_LEVELS = (0.0, 300.0, 450.0, 600.0, 20.0)  # arbitrary units; magnitude (Rician) noise keeps them positive
_MSD_MODALITY = {"CT": "CT", "MR": "MRI"}  # the Decathlon's names (Task04_Hippocampus says "MRI")
_MAX_TRIES = 1000


def _rotation(axis: int, degrees: float) -> np.ndarray:
    """The ``3 x 3`` rotation by ``degrees`` about world axis ``axis`` (0 = x, 1 = y, 2 = z)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = [index for index in range(3) if index != axis]
    rotation = np.eye(3)
    rotation[a, a], rotation[a, b], rotation[b, a], rotation[b, b] = c, -s, s, c
    return rotation


def _place_organs(
    rng: np.random.Generator, body: tuple[float, float], half_extent_k: float, spacing: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two (centre, radii) pairs in mm, each ellipsoid inside the body and clear of the other by 1 mm."""
    radii = [np.maximum(rng.uniform(0.3, 0.45, size=3) * min(body), spacing) for _ in range(2)]
    organs: list[tuple[np.ndarray, np.ndarray]] = []
    for radius in radii:
        for _ in range(_MAX_TRIES):
            centre = rng.uniform(-1.0, 1.0, size=3) * np.array([body[0], body[1], half_extent_k - radius[2]])
            inside = ((abs(centre[0]) + radius[0]) / body[0]) ** 2 + ((abs(centre[1]) + radius[1]) / body[1]) ** 2
            clear = all(np.linalg.norm(centre - other) > radius.max() + size.max() + 1.0 for other, size in organs)
            if inside <= 0.8 and clear:
                organs.append((centre, radius))
                break
        else:
            raise ValueError("the volume is too small to place two organs in the body; give a larger shape")
    return organs


def phantom_case(
    seed: int,
    shape: Sequence[int] = (48, 48, 24),
    spacing: Sequence[float] = (0.8, 0.8, 2.5),
    oblique: bool = True,
    modality: str = "CT",
) -> tuple[Volume, Volume]:
    """One synthetic case: an image volume and its label volume on the same grid.

    The body is an elliptic cylinder along ``k`` (semi-axes 38-45% and 30-40% of the in-plane extents), soft tissue
    at 40 HU in air at -1000 HU; inside it, clear of each other, an ellipsoid of class 1 (80 HU) and one of class 2
    (150 HU), radii 30-45% of the body's smaller semi-axis (at least one voxel). Noise: Gaussian, 20 HU. For
    ``modality="MR"`` the levels are 0, 300, 450 and 600 (arbitrary units) with magnitude noise (20), so every
    voxel is positive as in a magnitude MR image.

    Args:
        seed: the same seed gives the same case (arrays and affine); ``oblique`` changes only the affine.
        shape: ``(I, J, K)`` voxels.
        spacing: voxel size along ``i``, ``j``, ``k`` in mm.
        oblique: rotate the grid in the world by 10-20 degrees about one world axis (drawn from the seed);
            otherwise the voxel axes are the world's R, A, S.
        modality: ``"CT"`` or ``"MR"``.

    Returns:
        ``(image, label)``: image ``I x J x K`` float32 (HU for CT), label ``I x J x K`` uint8 in {0, 1, 2}; both
        with the affine ``R @ diag(spacing)`` that puts the volume's centre at the world origin, no source, no
        header.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality {modality!r}: expected one of {MODALITIES}")
    shape = tuple(int(size) for size in shape)
    spacing_mm = np.asarray(spacing, dtype=np.float64)
    if len(shape) != 3 or spacing_mm.shape != (3,):
        raise ValueError(f"shape and spacing have 3 values, got {shape} and {tuple(spacing_mm)}")
    rng = np.random.default_rng(seed)
    extent = np.array(shape) * spacing_mm
    body = (float(extent[0] * rng.uniform(0.38, 0.45)), float(extent[1] * rng.uniform(0.30, 0.40)))
    organs = _place_organs(rng, body, float(extent[2] / 2), spacing_mm)
    axis, degrees = int(rng.integers(3)), float(rng.uniform(10.0, 20.0))  # drawn even when not oblique

    centre_index = (np.array(shape) - 1) / 2
    x, y, z = (
        ((np.arange(size) - centre_index[axis_index]) * spacing_mm[axis_index]).reshape(
            [-1 if index == axis_index else 1 for index in range(3)]
        )
        for axis_index, size in enumerate(shape)
    )
    label = np.zeros(shape, dtype=np.uint8)
    body_mask = (x / body[0]) ** 2 + (y / body[1]) ** 2 <= 1.0
    for value, (centre, radius) in enumerate(organs, start=1):
        inside = sum(((coordinate - c) / r) ** 2 for coordinate, c, r in zip((x, y, z), centre, radius)) <= 1.0
        label[inside] = value

    air, tissue, organ, lesion, noise = _CT_HU if modality == "CT" else _MR_LEVELS
    clean = np.where(np.broadcast_to(body_mask, shape), tissue, air)
    clean[label == 1] = organ
    clean[label == 2] = lesion
    if modality == "CT":
        image = clean + rng.normal(0.0, noise, size=shape)
    else:
        image = np.hypot(clean + rng.normal(0.0, noise, size=shape), rng.normal(0.0, noise, size=shape))

    rotation = _rotation(axis, degrees) if oblique else np.eye(3)
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing_mm)
    affine[:3, 3] = -affine[:3, :3] @ centre_index
    return Volume(image.astype(np.float32), affine), Volume(label, affine)


def write_phantom_dataset(
    root: str | Path, cases: int = 8, test_cases: int = 2, seed: int = 0, modality: str = "CT"
) -> Path:
    """Write phantom cases in the Medical Segmentation Decathlon layout (as ``Task04_Hippocampus`` is distributed)::

        root/dataset.json
        root/imagesTr/case_000.nii.gz ...   training images       root/labelsTr/case_000.nii.gz ...
        root/imagesTs/case_008.nii.gz ...   test images (no labels, as in the Decathlon)

    ``dataset.json`` holds name, description, reference, licence, release, tensorImageSize, modality
    (``{"0": "CT"}`` or ``{"0": "MRI"}``), labels (:data:`PHANTOM_LABELS`), numTraining, numTest, training (``{"image":
    "./imagesTr/...", "label": "./labelsTr/..."}``) and test (``"./imagesTs/..."``). Case ``n`` is
    :func:`phantom_case` with the ``n``-th seed that ``numpy.random.SeedSequence(seed)`` generates, default shape
    and spacing, oblique. ``dataset.json`` is written last, so a folder that has one is complete.

    Returns:
        ``root``.

    Raises:
        ConvUNeXtError: ``root`` exists and is not an empty folder.
    """
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConvUNeXtError(f"{root}: exists and is not an empty folder; give a new folder for the phantom dataset")
    if cases < 1 or test_cases < 0:
        raise ValueError(f"cases must be at least 1 and test_cases at least 0, got {cases} and {test_cases}")
    seeds = np.random.SeedSequence(seed).generate_state(cases + test_cases)
    training, test = [], []
    for index, case_seed in enumerate(seeds):
        image, label = phantom_case(int(case_seed), modality=modality)
        name = f"case_{index:03d}.nii.gz"
        if index < cases:
            write_nifti(root / "imagesTr" / name, image.array, image)
            write_nifti(root / "labelsTr" / name, label.array, label)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            write_nifti(root / "imagesTs" / name, image.array, image)
            test.append(f"./imagesTs/{name}")
    atomic_write_json(
        root / "dataset.json",
        {
            "name": "Phantom",
            "description": f"Synthetic {modality} phantoms: a body with two organ-like ellipsoids (seed {seed})",
            "reference": "convunext.data.volumes.phantom",
            "licence": "CC0-1.0",
            "release": f"convunext {__version__}",
            "tensorImageSize": "3D",
            "modality": {"0": _MSD_MODALITY[modality]},
            "labels": dict(PHANTOM_LABELS),
            "numTraining": cases,
            "numTest": test_cases,
            "training": training,
            "test": test,
        },
    )
    return root
