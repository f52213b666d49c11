"""Parameters and GFLOPs of a registry model, counted on the ``meta`` device (no weights, nothing computed)."""

from __future__ import annotations

from typing import Any

import torch

from ..utils.flops import count_flops, count_parameters
from .registry import create_model, model_arguments


def model_cost(name: str, size: int | tuple[int, int] = 480, **kwargs: Any) -> tuple[int, float]:
    """``(parameters, GFLOPs)`` of registry model ``name`` built with ``kwargs``; GFLOPs of one eval-mode forward
    pass on one ``in_channels x size x size`` image (``size``: a side or ``(height, width)``; a multiply-add = 2
    FLOPs, as :func:`~convunext.utils.flops.count_flops`)."""
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    height, width = (size, size) if isinstance(size, int) else size
    in_channels = int(kwargs.get("in_channels", model_arguments(name)["in_channels"]))
    return count_parameters(model), count_flops(model, (1, in_channels, height, width)) / 1e9
