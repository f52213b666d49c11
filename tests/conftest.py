"""Shared fixtures: where the real datasets are (``CONVUNEXT_DATA``, else ``<repo>/../shared/data``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root_path() -> Path:
    """The folder holding the real copies of DRIVE (and GlaS/HRF when available)."""
    value = os.environ.get("CONVUNEXT_DATA")
    return Path(value).expanduser() if value else REPO.parent / "shared" / "data"


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real-data root (it may not exist on a developer machine)."""
    return data_root_path()


@pytest.fixture(scope="session")
def drive_root(data_root: Path) -> Path:
    """The real DRIVE copy. In CI (``CI=true``) a missing copy is a failure, elsewhere a skip."""
    root = data_root / "DRIVE"
    if not root.is_dir():
        message = f"real DRIVE copy not found at {root} (set CONVUNEXT_DATA)"
        if running_in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def glas_root(data_root: Path) -> Path:
    """The real GlaS copy; tests using it are skipped when it is absent."""
    root = data_root / "GlaS"
    if not root.is_dir():
        pytest.skip(f"real GlaS copy not found at {root}")
    return root


@pytest.fixture(scope="session")
def hrf_root(data_root: Path) -> Path:
    """The real HRF copy; tests using it are skipped when it is absent."""
    root = data_root / "HRF"
    if not root.is_dir():
        pytest.skip(f"real HRF copy not found at {root}")
    return root
