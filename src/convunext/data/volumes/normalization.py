"""Intensity normalisation of volumes, per modality, as nnU-Net does it.

* **CT** (Hounsfield units mean the same on every scan): clip to the 0.5th and 99.5th percentiles of the
  *foreground* voxels of the whole training set, then z-score with the mean and standard deviation of those
  clipped foreground voxels — one mapping for every volume (:func:`fit_ct_normalization`).
* **A window** the user gives (``--window LOW,HIGH``, e.g. ``-160,240`` for soft tissue): clip to it, then z-score
  with the training foreground's mean and standard deviation inside the window.
* **MR and anything else** (arbitrary units that vary between scans): z-score each volume with its own mean and
  standard deviation.

An :class:`IntensityNormalization` is stored in the checkpoint (:meth:`~IntensityNormalization.to_dict`), so that
prediction applies exactly the mapping training used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ...errors import ConvUNeXtError

__all__ = ["IntensityNormalization", "fit_ct_normalization", "parse_window"]

SCHEMES = ("ct", "window", "zscore")
CT_PERCENTILES = (0.5, 99.5)
_MAX_FOREGROUND_SAMPLES = 1_000_000
"""Foreground voxels kept per volume for the CT percentiles (a uniform subsample beyond it, as nnU-Net samples)."""


@dataclass(frozen=True)
class IntensityNormalization:
    """How one image channel's values become the network's input.

    Attributes:
        scheme: ``"ct"`` / ``"window"``: clip to ``[low, high]``, then ``(x - mean) / std`` with the stored
            dataset-wide ``mean``/``std``; ``"zscore"``: each volume's own mean and standard deviation.
        low: the lower end of the clip range (``"ct"``, ``"window"``).
        high: its upper end.
        mean: the dataset-wide mean of the clipped foreground (``"ct"``, ``"window"``).
        std: its standard deviation.
    """

    scheme: str = "zscore"
    low: float | None = None
    high: float | None = None
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.scheme != "zscore" and None in (self.low, self.high, self.mean, self.std):
            raise ValueError(f"scheme {self.scheme!r} needs low, high, mean and std")

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The normalised copy (float32) of ``array`` (one channel's volume or slices, any shape)."""
        values = np.asarray(array, dtype=np.float32)
        if self.scheme == "zscore":
            mean, std = float(values.mean()), float(values.std())
            return (values - mean) / max(std, 1e-8)
        clipped = np.clip(values, self.low, self.high)
        return (clipped - np.float32(self.mean)) / np.float32(max(self.std or 0.0, 1e-8))

    def describe(self) -> str:
        """One line for reports: ``"CT: clip to [-981, 243] HU, z-score (mean 52.1, std 80.3)"``."""
        if self.scheme == "zscore":
            return "z-score per volume"
        label = "CT" if self.scheme == "ct" else "window"
        return f"{label}: clip to [{self.low:g}, {self.high:g}], z-score (mean {self.mean:.4g}, std {self.std:.4g})"

    def to_dict(self) -> dict[str, Any]:
        """The JSON record stored in a checkpoint (:meth:`from_dict` reads it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IntensityNormalization:
        """The inverse of :meth:`to_dict` (a checkpoint's record).

        Raises:
            ConvUNeXtError: an unknown scheme or missing values.
        """
        try:
            return cls(**{key: data.get(key) for key in ("scheme", "low", "high", "mean", "std")})
        except (TypeError, ValueError) as error:
            raise ConvUNeXtError(f"intensity normalisation record {data!r}: {error}") from None


def _foreground_values(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    values = np.asarray(image, dtype=np.float32)[np.asarray(label) > 0]
    if values.size > _MAX_FOREGROUND_SAMPLES:
        values = rng.choice(values, _MAX_FOREGROUND_SAMPLES, replace=False)
    return values


def fit_ct_normalization(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]], window: Sequence[float] | None = None
) -> IntensityNormalization:
    """The dataset-wide normalisation of CT (or of a user ``window``) from the training set's ``(image, label)``
    volumes (same shapes; label > 0 is foreground).

    Without ``window``: clip range = the 0.5th / 99.5th percentiles of all foreground voxels; with it, the window.
    Then the mean and standard deviation of the clipped foreground voxels.

    Raises:
        ConvUNeXtError: the training set has no foreground voxel.
    """
    rng = np.random.default_rng(0)
    samples = [_foreground_values(image, label, rng) for image, label in pairs]
    values = np.concatenate(samples) if samples else np.zeros(0, np.float32)
    if values.size == 0:
        raise ConvUNeXtError("the training volumes hold no foreground voxel: cannot fit the CT normalisation")
    if window is None:
        low, high = (float(v) for v in np.percentile(values, CT_PERCENTILES))
        scheme = "ct"
    else:
        low, high = float(window[0]), float(window[1])
        scheme = "window"
    clipped = np.clip(values.astype(np.float64), low, high)
    return IntensityNormalization(scheme, low, high, float(clipped.mean()), float(clipped.std()))


def parse_window(text: str | Sequence[float] | None) -> tuple[float, float] | None:
    """``"-160,240"`` (or a pair) -> ``(-160.0, 240.0)``; None stays None.

    Raises:
        ConvUNeXtError: not two numbers, or LOW >= HIGH.
    """
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        low, high = (float(part) for part in parts)
    except (TypeError, ValueError):
        raise ConvUNeXtError(f"window {text!r}: expected LOW,HIGH (two numbers, e.g. -160,240)") from None
    if not low < high:
        raise ConvUNeXtError(f"window {text!r}: LOW must be below HIGH")
    return low, high
