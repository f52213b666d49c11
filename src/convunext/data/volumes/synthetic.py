"""``synthetic_ct``: the built-in volume dataset — CT-like phantoms, written once as a Decathlon folder.

Each case is :func:`~convunext.data.volumes.phantom.phantom_case`: a body in air with two organ-like ellipsoids (the
classes), Gaussian noise in Hounsfield units, anisotropic voxels and an oblique affine. The folder is written on first
use under :func:`synthetic_ct_root` (deterministic from the seed and case count) and then read as any Decathlon folder,
so ``convunext train synthetic_ct`` runs the whole volume path — NIfTI reading, CT normalisation, slicing, splits by
volume — with no download.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import ConvUNeXtError
from ..base import DatasetInfo
from ..registry import DatasetSpec, register_dataset
from .dataset import DEFAULT_FOREGROUND_FRACTION, VolumeSliceDataset, volume_info
from .phantom import write_phantom_dataset

__all__ = ["SYNTHETIC_CT_CASES", "SyntheticCtDataset", "synthetic_ct_root", "synthetic_ct_root_of"]

SYNTHETIC_CT_CASES = 10
_FORMAT = 1  # bump when the phantoms change, so that a stale cached folder is not reused


def synthetic_ct_root(cases: int = SYNTHETIC_CT_CASES, seed: int = 0) -> Path:
    """The folder of the phantom dataset of ``cases`` labelled cases and ``seed``, written if missing.

    It lives in ``$CONVUNEXT_CACHE`` (default ``~/.cache/convunext``) under ``synthetic-ct-v1-<cases>-<seed>``;
    written to a temporary folder beside it and renamed, so an interrupted write leaves nothing half-made.

    Raises:
        ConvUNeXtError: fewer than 5 cases (the split by volume needs a training, a validation and a test case).
    """
    if cases < 5:
        raise ConvUNeXtError(f"synthetic_ct: {cases} cases; at least 5 are needed (training, validation and test)")
    cache = Path(os.environ.get("CONVUNEXT_CACHE", "~/.cache/convunext")).expanduser()
    root = cache / f"synthetic-ct-v{_FORMAT}-{cases}-{seed}"
    if (root / "dataset.json").is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".synthetic-ct-", dir=cache))
    try:
        write_phantom_dataset(staging, cases=cases, test_cases=2, seed=seed, modality="CT")
        try:
            staging.rename(root)
        except OSError:  # another process wrote it first
            if not (root / "dataset.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def synthetic_ct_root_of(options: Mapping[str, Any]) -> Path:
    """:func:`synthetic_ct_root` of a run's ``data.options`` (their ``cases`` and ``seed``, where given): the phantoms
    a checkpoint of ``synthetic_ct`` was trained on."""
    return synthetic_ct_root(**{key: options[key] for key in ("cases", "seed") if key in options})


def synthetic_ct_info(cases: int = SYNTHETIC_CT_CASES, seed: int = 0, context: int = 1) -> DatasetInfo:
    """The :class:`~convunext.data.DatasetInfo` of the phantom dataset (normalisation fitted on its training
    cases)."""
    return volume_info(synthetic_ct_root(cases, seed), context=context)


class SyntheticCtDataset(VolumeSliceDataset):
    """The slices of the phantom dataset's ``split`` (see the module docstring and :class:`VolumeSliceDataset`)."""

    def __init__(
        self,
        split: str = "train",
        info: DatasetInfo | None = None,
        cases: int = SYNTHETIC_CT_CASES,
        seed: int = 0,
        context: int = 1,
        foreground_fraction: float = DEFAULT_FOREGROUND_FRACTION,
    ) -> None:
        super().__init__(
            synthetic_ct_root(cases, seed),
            split,
            info=info,
            context=context,
            foreground_fraction=foreground_fraction,
        )


register_dataset(
    DatasetSpec(
        name="synthetic_ct",
        title="Synthetic CT",
        description="CT-like phantom volumes (NIfTI, anisotropic, oblique), generated once, no download: the volume "
        "path in one command",
        reader=SyntheticCtDataset,
        info=synthetic_ct_info,
        preset="synthetic_ct",
        detected=False,
    )
)
