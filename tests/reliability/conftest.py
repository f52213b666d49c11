"""A tiny synthetic training run shared by the reliability tests: width-8 models, 5 images of 64x64, crops of 48."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
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


SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
"""The environment of the helper processes the reliability tests start (one OpenMP thread: 2 busy cores)."""
_HOLD_LOCK = (
    "import sys, time\n"
    "from convunext.utils.lock import RunLock\n"
    "with RunLock(sys.argv[1]):\n"
    "    print('locked', flush=True)\n"
    "    time.sleep(120)\n"
)


@pytest.fixture
def hold_lock() -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    """``hold_lock(folder)``: a second process that holds ``folder``'s :class:`~convunext.utils.lock.RunLock`
    (returned once it does) until it is killed; every such process is killed at the end of the test."""
    holders: list[subprocess.Popen[str]] = []

    def start(folder: Path) -> subprocess.Popen[str]:
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True, env=SUBPROCESS_ENV
        )
        holders.append(holder)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        return holder

    yield start
    for holder in holders:
        holder.kill()
        holder.wait()


@pytest.fixture
def fail_fsync_of(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """``fail_fsync_of(name)``: from then on, syncing a temporary file of ``name`` (``.NAME.*.tmp``, as
    :func:`~convunext.utils.io.atomic_path` writes) fails as on a full disk, after its data was written."""

    def arm(name: str) -> None:
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}."):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    return arm
