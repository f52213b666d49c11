"""Where datasets live by default."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "CONVUNEXT_DATA"


def default_data_root() -> Path:
    """The folder holding ``DRIVE/``, ``GlaS/``, ``HRF/`` when no root is given.

    In order: the ``CONVUNEXT_DATA`` environment variable; ``../shared/data`` next to a source checkout of
    convunext (the layout of the project's own tests and benchmarks), when that folder exists; ``./data``.
    """
    value = os.environ.get(ENV_VAR)
    if value:
        return Path(value).expanduser()
    checkout = Path(__file__).resolve().parents[3]  # src/convunext/data/paths.py -> checkout root
    shared = checkout.parent / "shared" / "data"
    if (checkout / "pyproject.toml").is_file() and shared.is_dir():
        return shared
    return Path("data")
