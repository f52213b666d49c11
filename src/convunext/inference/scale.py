"""Scale matching: run a model at the scale it was trained at, whatever the resolution of the input.

A vessel model learns vessels of the widths it was shown, in pixels. The same retina photographed by another
camera, or saved at another resolution, shows them wider or narrower, and a model trained on DRIVE (field of view
540 px across) scores Dice 0.40 on 999x960 photographs whose vessels are about twice as wide — against 0.64 once
they are brought to DRIVE's scale. A model therefore records the scale of its training images (the median
diameter of their fields of view, :func:`~convunext.data.fov.fov_diameter`, as ``meta["scale"]["fov_diameter"]``),
and every image it predicts is resampled to that scale first:

* ``auto`` (the default): the input's field of view is measured — from the dataset's FOV mask where there is one,
  else derived from the image (:func:`~convunext.data.fov.derive_fov`) — and the image is resized by
  ``model diameter / input diameter``; the probabilities are resized back to the input's size, so masks, metrics
  and overlays are at the input's resolution. Inputs within :data:`SCALE_TOLERANCE` of the model's scale are run
  as they are (no interpolation blur for images of the training camera), and so is every input of a model that
  records no scale (models of non-fundus data);
* ``off``: every image as it is;
* a number: every image resized by that factor (0.5 halves its sides) — for data without a field of view, when the
  user knows the ratio of resolutions.

What was done is recorded per image (:meth:`ScaleMatch.record`) in evaluation reports and prediction folders.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..data.fov import derive_fov, fov_diameter
from ..errors import ConvUNeXtError

__all__ = [
    "MAX_SCALE",
    "SCALE_TOLERANCE",
    "ScaleMatch",
    "ScalePolicy",
    "ScaleSetting",
    "check_scale_setting",
    "find_fov",
    "match_scale",
    "model_fov_diameter",
    "parse_scale",
]

ScaleSetting = Literal["auto", "off"] | float
"""``"auto"``, ``"off"`` or a resize factor (see the module docstring)."""
SCALE_TOLERANCE = 0.1
"""``auto`` leaves an input as it is when its scale is within 10% of the model's: the model's accuracy does not
change over such a range (vessel widths vary more than that within one image), and resampling would only blur."""
MAX_SCALE = 8.0
"""Largest resize factor, either way (``1/8`` to ``8``): beyond it, the input is not the kind of image the model
knows, and an upsampled 3504x2336 photograph would need tens of GB."""
MIN_FOV_FRACTION = 0.05
"""A derived field of view covering less of the image than this is not trusted (a dark photograph, not a fundus)."""


def check_scale_setting(setting: ScaleSetting) -> ScaleSetting:
    """Return ``setting`` if it is ``"auto"``, ``"off"`` or a factor in ``[1/MAX_SCALE, MAX_SCALE]``.

    Raises:
        ConvUNeXtError: anything else.
    """
    if setting in ("auto", "off"):
        return setting
    is_number = isinstance(setting, (int, float)) and not isinstance(setting, bool)
    if is_number and math.isfinite(setting) and 1 / MAX_SCALE <= setting <= MAX_SCALE:
        return float(setting)
    raise ConvUNeXtError(
        f"scale={setting!r} is not valid; expected auto, off or a resize factor from {1 / MAX_SCALE:g} to {MAX_SCALE:g}"
    )


def parse_scale(text: str) -> ScaleSetting:
    """An argparse ``type`` for ``--scale``: ``auto``, ``off`` or a resize factor."""
    if text in ("auto", "off"):
        return text  # type: ignore[return-value]
    try:
        return check_scale_setting(float(text))
    except (ValueError, ConvUNeXtError):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected auto, off or a resize factor from {1 / MAX_SCALE:g} to {MAX_SCALE:g}"
        ) from None


def model_fov_diameter(meta: Mapping[str, Any]) -> float | None:
    """The field-of-view diameter (pixels) of a checkpoint's training images, or None if it records none."""
    scale = meta.get("scale")
    value = scale.get("fov_diameter") if isinstance(scale, Mapping) else None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def find_fov(image: np.ndarray) -> np.ndarray | None:
    """The field of view derived from ``image`` (``H x W x C``, :func:`~convunext.data.fov.derive_fov`), or None
    when it holds none to trust (no bright region, or one under :data:`MIN_FOV_FRACTION` of the image)."""
    try:
        fov = derive_fov(image)
    except ConvUNeXtError:
        return None
    return fov if fov.mean() >= MIN_FOV_FRACTION else None


@dataclass(frozen=True)
class ScaleMatch:
    """How one image is run: resized by ``factor`` before the model (1: as it is), and why.

    Attributes:
        factor: the resize factor of the image's sides.
        input_diameter: the field-of-view diameter measured on the image (pixels), or None if none was measured.
        model_diameter: the model's (:func:`model_fov_diameter`), or None.
        reason: why, in words (``"auto: FOV 919 px -> 540 px"``).
    """

    factor: float
    input_diameter: float | None
    model_diameter: float | None
    reason: str

    def record(self) -> dict[str, Any]:
        """JSON-ready: ``scale`` (the factor, 4 decimals), ``fov_diameter`` (measured, or None), ``scale_reason``."""
        measured = None if self.input_diameter is None else round(self.input_diameter, 1)
        return {"scale": round(self.factor, 4), "fov_diameter": measured, "scale_reason": self.reason}


def match_scale(
    setting: ScaleSetting,
    model_diameter: float | None,
    image: np.ndarray | None = None,
    fov: np.ndarray | None = None,
) -> ScaleMatch:
    """Decide how to resize one image (see the module docstring).

    Args:
        setting: ``"auto"``, ``"off"`` or a factor.
        model_diameter: the model's training FOV diameter (:func:`model_fov_diameter`), or None.
        image: the image, ``H x W x C`` float in [0, 1] or uint8 (for ``auto`` without ``fov``).
        fov: the image's field of view, bool ``H x W``, when the data has one (then it is measured, not derived).
    """
    setting = check_scale_setting(setting)
    if setting == "off":
        return ScaleMatch(1.0, None, model_diameter, "off")
    if setting != "auto":
        return ScaleMatch(float(setting), None, model_diameter, f"given: x{setting:g}")
    if model_diameter is None:
        return ScaleMatch(1.0, None, None, "auto: the model records no training scale")
    if fov is None:
        if image is None:
            raise ValueError("scale matching needs the image or its field of view")
        fov = find_fov(image)
        if fov is None:
            return ScaleMatch(1.0, None, model_diameter, "auto: no field of view found in the image; run as it is")
    diameter = fov_diameter(fov)
    ratio = model_diameter / diameter
    if abs(ratio - 1.0) <= SCALE_TOLERANCE:
        return ScaleMatch(1.0, diameter, model_diameter, f"auto: FOV {diameter:.0f} px, within 10% of the model's")
    factor = min(max(ratio, 1 / MAX_SCALE), MAX_SCALE)
    return ScaleMatch(factor, diameter, model_diameter, f"auto: FOV {diameter:.0f} px -> {model_diameter:.0f} px")


@dataclass(frozen=True)
class ScalePolicy:
    """A scale setting bound to a model's training scale: :meth:`match` decides each image's resize factor.

    Attributes:
        setting: ``"auto"``, ``"off"`` or a factor (checked here).
        model_diameter: the model's training FOV diameter (:func:`model_fov_diameter`), or None.
    """

    setting: ScaleSetting = "off"
    model_diameter: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "setting", check_scale_setting(self.setting))

    @classmethod
    def for_checkpoint(cls, setting: ScaleSetting, meta: Mapping[str, Any]) -> ScalePolicy:
        """``setting`` for the checkpoint described by ``meta`` (its recorded training scale)."""
        return cls(setting, model_fov_diameter(meta))

    @property
    def measures_images(self) -> bool:
        """Whether :meth:`match` looks at each image (``auto`` with a training scale to match): else it decides
        without one."""
        return self.setting == "auto" and self.model_diameter is not None

    def match(self, image: np.ndarray | None = None, fov: np.ndarray | None = None) -> ScaleMatch:
        """:func:`match_scale` of one image (``H x W x C``) or of its field of view (bool ``H x W``)."""
        return match_scale(self.setting, self.model_diameter, image, fov)

    def record(self) -> dict[str, Any]:
        """For a report's record: ``scale_setting`` and the model's ``model_fov_diameter``."""
        return {"scale_setting": self.setting, "model_fov_diameter": self.model_diameter}
