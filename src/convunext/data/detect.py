"""Recognise which dataset layout a folder holds, so commands can take just a path."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConvUNeXtError
from .base import locate_root
from .drive import is_drive_root
from .glas import is_glas_root
from .hrf import is_hrf_root

_LAYOUTS = (
    ("drive", "DRIVE", is_drive_root),
    ("glas", "GlaS", is_glas_root),
    ("hrf", "HRF", is_hrf_root),
)


def is_folder_root(path: Path) -> bool:
    """True for the generic layout: ``images/`` and ``masks/`` side by side."""
    return (path / "images").is_dir() and (path / "masks").is_dir()


def detect_dataset(root: str | Path) -> str:
    """The dataset name (``drive``, ``glas``, ``hrf`` or ``folder``) whose layout ``root`` holds.

    The generic ``images/`` + ``masks/`` layout wins when ``root`` itself has it (the output of
    ``convunext data prepare``); otherwise the distributed layouts are searched as :func:`locate_root` does.

    Raises:
        ConvUNeXtError: ``root`` is missing or holds none of the layouts.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConvUNeXtError(f"{root}: dataset folder not found")
    if is_folder_root(root):
        return "folder"
    for name, folder_name, is_root in _LAYOUTS:
        try:
            locate_root(root, folder_name, is_root, folder_name, "")
        except ConvUNeXtError:
            continue
        return name
    raise ConvUNeXtError(
        f"{root}: not a recognised dataset (expected DRIVE, GlaS or HRF as distributed, or images/ + masks/); "
        "name it with --dataset"
    )
