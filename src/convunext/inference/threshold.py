"""A binary model's operating threshold: which foreground probability makes a pixel foreground.

The threshold is chosen on the validation split when the model is trained (the Dice-optimal one,
:class:`~convunext.evaluation.threshold.ThresholdSearch`) and stored with the checkpoint (``meta["threshold"]``);
``predict`` and ``evaluate`` run at it unless told otherwise (``--threshold argmax`` or ``0.5`` gives the argmax
back, which comparisons of models use).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from torch import Tensor

from ..errors import ConvUNeXtError

__all__ = [
    "ThresholdSetting",
    "check_threshold_setting",
    "checkpoint_threshold",
    "parse_threshold",
    "predicted_labels",
    "resolve_threshold",
]

ThresholdSetting = Literal["auto", "argmax"] | float
"""``"auto"`` (the checkpoint's validation threshold, the argmax where it has none), ``"argmax"`` (the paper's
protocol; for a binary model the threshold 0.5) or a probability in (0, 1)."""


def check_threshold_setting(setting: ThresholdSetting) -> ThresholdSetting:
    """Return ``setting`` if it is ``"auto"``, ``"argmax"`` or a probability strictly between 0 and 1.

    Raises:
        ConvUNeXtError: anything else.
    """
    if setting in ("auto", "argmax"):
        return setting
    if isinstance(setting, (int, float)) and not isinstance(setting, bool) and 0.0 < setting < 1.0:
        return float(setting)
    raise ConvUNeXtError(f"threshold={setting!r} is not valid; expected auto, argmax or a probability between 0 and 1")


def checkpoint_threshold(meta: Mapping[str, Any]) -> float | None:
    """The operating threshold a checkpoint stores (chosen on validation), or None."""
    record = meta.get("threshold")
    value = record.get("value") if isinstance(record, Mapping) else None
    return float(value) if isinstance(value, (int, float)) and 0.0 < value < 1.0 else None


def resolve_threshold(setting: ThresholdSetting, meta: Mapping[str, Any]) -> float | None:
    """The foreground threshold a model runs at, None for the argmax: ``setting``, or for ``auto`` the checkpoint's
    validation threshold (the argmax if it has none). A binary model's 0.5 is its argmax, and is returned as None;
    a model of more than two classes always takes the argmax.

    Raises:
        ConvUNeXtError: a threshold given for a model of more than two classes, or a setting that is not valid.
    """
    setting = check_threshold_setting(setting)
    if len(meta["classes"]) != 2:
        if setting not in ("auto", "argmax"):
            raise ConvUNeXtError(
                f"--threshold {setting:g}: the model has {len(meta['classes'])} classes; a threshold applies to a "
                "binary model (the others take the argmax over classes)"
            )
        return None
    value = checkpoint_threshold(meta) if setting == "auto" else None if setting == "argmax" else float(setting)
    return None if value is None or value == 0.5 else value


def parse_threshold(text: str) -> ThresholdSetting:
    """An argparse ``type`` for ``--threshold``: ``auto``, ``argmax`` or a probability between 0 and 1."""
    import argparse

    if text in ("auto", "argmax"):
        return text  # type: ignore[return-value]
    try:
        return check_threshold_setting(float(text))
    except (ValueError, ConvUNeXtError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto, argmax or a probability between 0 and 1") from None


def predicted_labels(probabilities: Tensor, threshold: float | None = None) -> Tensor:
    """Class ids of ``... x K x H x W`` probabilities (the class dimension third from last): the argmax, or with
    ``threshold`` (two classes) 1 where the foreground probability is above it. Returns ``... x H x W`` int64."""
    if threshold is None:
        return probabilities.argmax(dim=-3)
    return (probabilities.select(-3, 1) > threshold).long()
