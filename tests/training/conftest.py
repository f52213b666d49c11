"""A tiny synthetic training run for the training tests: width-8 models, 8 images of 64x64, crops of 48, batch 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from convunext.training.config import ExperimentConfig

TINY_RUN = (
    "model.kwargs.width=8",
    "data.options.num_images=8",
    "data.options.size=64",
    "data.crop_size=48",
    "optim.batch_size=2",
    "train.progress_bar=false",
)
"""``--set`` overrides of the tiny run (6 training images: 3 steps per epoch; 2 validation images)."""


@pytest.fixture
def tiny_run(tmp_path: Path) -> Callable[..., ExperimentConfig]:
    """``tiny_run(*overrides)``: the tiny run's config, writing under ``tmp_path``, with more ``--set`` overrides."""

    def build(*extra: str) -> ExperimentConfig:
        return ExperimentConfig.from_yaml("synthetic", [*TINY_RUN, f"train.output_dir={tmp_path}", *extra])

    return build


@pytest.fixture
def tiny_run_arguments(tmp_path: Path) -> list[str]:
    """The tiny run as ``convunext train`` arguments (``--set`` pairs), writing under ``tmp_path``."""
    return [part for item in (*TINY_RUN, f"train.output_dir={tmp_path}") for part in ("--set", item)]
