"""A 2D model on 3D volumes: which axis to slice along, 2.5D context, and the record a checkpoint keeps.

A volume of ``C`` channels is held as ``C x S x H x W`` after :func:`to_slices` moves the slice axis first; slice
``s`` with a context of ``k`` slices (odd) is the ``k * C x H x W`` stack of slices ``s - k//2 .. s + k//2`` of every
channel (channel-major: all ``k`` slices of channel 0, then of channel 1...), with the first and last slice repeated
beyond the volume's ends. :class:`VolumeSettings` records the choices and the intensity normalisation, stored in the
checkpoint (``meta["volume"]``) so that prediction slices and normalises exactly as training did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import ConvUNeXtError
from .normalization import IntensityNormalization

__all__ = ["VolumeSettings", "check_context", "context_stack", "from_slices", "largest_spacing_axis", "to_slices"]


def largest_spacing_axis(spacing: Sequence[float]) -> int:
    """The through-plane axis: the one of largest spacing (the last of those tied: an isotropic volume is sliced
    along its third axis, the usual axial one)."""
    values = [float(v) for v in spacing]
    top = max(values)
    return max(axis for axis, value in enumerate(values) if value >= top * (1 - 1e-6))


def check_context(context: int) -> int:
    """``context`` if it is a positive odd number of slices.

    Raises:
        ConvUNeXtError: even or below 1.
    """
    if isinstance(context, bool) or not isinstance(context, int) or context < 1 or context % 2 == 0:
        raise ConvUNeXtError(f"context {context!r}: the number of neighbouring slices must be odd (1, 3, 5...)")
    return context


def to_slices(array: np.ndarray, axis: int) -> np.ndarray:
    """``... x D0 x D1 x D2`` -> ``... x S x H x W`` with volume axis ``axis`` (0-2 of the last three) first."""
    return np.moveaxis(array, array.ndim - 3 + axis, array.ndim - 3)


def from_slices(array: np.ndarray, axis: int) -> np.ndarray:
    """The inverse of :func:`to_slices`."""
    return np.moveaxis(array, array.ndim - 3, array.ndim - 3 + axis)


def context_stack(volume: np.ndarray, index: int, context: int) -> np.ndarray:
    """The network input of slice ``index`` of ``volume`` (``C x S x H x W``): ``context * C x H x W``, edge slices
    repeated beyond the ends."""
    half = context // 2
    picks = np.clip(np.arange(index - half, index + half + 1), 0, volume.shape[1] - 1)
    stacked = volume[:, picks]  # C x k x H x W
    return stacked.reshape(-1, *volume.shape[2:])


@dataclass(frozen=True)
class VolumeSettings:
    """How a 2D model sees volumes: stored with its checkpoint.

    Attributes:
        slice_axis: the volume axis (0, 1, 2 of the file's voxel order) that slices run along.
        context: slices per input (odd; 1 = plain 2D, 3 or 5 = 2.5D).
        modalities: one per image channel (``"CT"``, ``"MRI"``...).
        normalizations: one :class:`IntensityNormalization` per image channel.
        spacing: the training volumes' median voxel spacing (mm, file order), for reference.
    """

    slice_axis: int
    context: int
    modalities: tuple[str, ...]
    normalizations: tuple[IntensityNormalization, ...]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def in_channels(self) -> int:
        """Channels of the network input: ``context`` x image channels."""
        return self.context * len(self.modalities)

    def normalize(self, channels: Sequence[np.ndarray]) -> np.ndarray:
        """One volume's channels (each ``D0 x D1 x D2``) -> ``C x D0 x D1 x D2`` float32, normalised."""
        if len(channels) != len(self.normalizations):
            raise ConvUNeXtError(f"{len(channels)} image channels, the model was trained on {len(self.normalizations)}")
        return np.stack([norm.apply(channel) for norm, channel in zip(self.normalizations, channels)])

    def to_dict(self) -> dict[str, Any]:
        """The JSON record stored in a checkpoint as ``meta["volume"]`` (:meth:`from_dict` reads it)."""
        return {
            "slice_axis": self.slice_axis,
            "context": self.context,
            "modalities": list(self.modalities),
            "normalizations": [norm.to_dict() for norm in self.normalizations],
            "spacing": list(self.spacing),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VolumeSettings:
        """The inverse of :meth:`to_dict`.

        Raises:
            ConvUNeXtError: a malformed record.
        """
        try:
            return cls(
                slice_axis=int(data["slice_axis"]),
                context=check_context(int(data["context"])),
                modalities=tuple(str(m) for m in data["modalities"]),
                normalizations=tuple(IntensityNormalization.from_dict(n) for n in data["normalizations"]),
                spacing=tuple(float(v) for v in data.get("spacing", (1.0, 1.0, 1.0))),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ConvUNeXtError(f"volume settings record is malformed ({error})") from None
