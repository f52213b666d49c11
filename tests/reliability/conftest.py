"""A tiny synthetic training run shared by the reliability tests: width-8 models, 5 images of 64x64, crops of 48."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from convunext.training.config import ExperimentConfig

TINY_SETTINGS = (
    "model.kwargs.width=8",
    "data.options.num_images=5",
    "data.options.size=64",
    "data.crop_size=48",
    "train.progress_bar=false",
)
"""``--set`` overrides of the tiny run (4 training images and 1 validation image; 2 test images)."""


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., ExperimentConfig]:
    """``tiny_config(*overrides)``: the tiny run's config with more ``--set`` overrides."""

    def build(*extra: str) -> ExperimentConfig:
        return ExperimentConfig.from_yaml("synthetic", [*TINY_SETTINGS, *extra])

    return build


@pytest.fixture(scope="session")
def tiny_train_argv() -> Callable[..., list[str]]:
    """``tiny_train_argv(out, *overrides, epochs=1)``: ``convunext train`` arguments of the tiny run writing under
    ``out``."""

    def build(out: Path, *extra: str, epochs: int = 1) -> list[str]:
        settings = [arg for item in [*TINY_SETTINGS, *extra] for arg in ("--set", item)]
        return ["train", "--epochs", str(epochs), "--output-dir", str(out), *settings]

    return build
