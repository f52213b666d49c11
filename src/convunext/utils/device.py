"""Device names as users write them (``auto``, ``cpu``, ``cuda``, ``cuda:1``) turned into ``torch.device``."""

from __future__ import annotations

import torch

from ..errors import ConvUNeXtError


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``.

    Raises :class:`~convunext.errors.ConvUNeXtError` for a name torch does not know or CUDA on a machine without it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConvUNeXtError(f"train.device={name!r} is not a valid device") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConvUNeXtError(f"train.device={name!r} but CUDA is not available on this machine")
    return device
