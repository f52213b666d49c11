"""Tiny checkpoints for the predictor tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from convunext import create_model
from convunext.checkpoint import Checkpoint, load_checkpoint, save_checkpoint


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Callable[..., Checkpoint]:
    """``make(name, seed, **meta)``: a width-8 UNet checkpoint with random weights (``seed``) in ``tmp_path/name``,
    ``meta`` added to its description (e.g. ``data={"eval_tile_size": 96}``)."""

    def make(name: str = "run", seed: int = 0, **meta: Any) -> Checkpoint:
        torch.manual_seed(seed)
        described = {
            "model": {"name": "unet", "kwargs": {"width": 8}},
            "classes": ["background", "vessel"],
            "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
            **meta,
        }
        return load_checkpoint(save_checkpoint(tmp_path / name, "best", create_model("unet", width=8), described))

    return make
