"""Recognise which dataset layout a folder holds, so commands can take just a path."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConvUNeXtError
from .base import find_root
from .registry import DatasetSpec, dataset_spec, list_datasets


def detectable_datasets() -> list[str]:
    """The registered datasets read from a folder (all but generated data), in registration order: the names
    :func:`detect_dataset` returns and ``--dataset`` accepts."""
    return [name for name in list_datasets() if dataset_spec(name).has_files]


def _holds(spec: DatasetSpec, root: Path) -> bool:
    """Whether ``root`` holds the layout of ``spec``: ``root`` itself for a dataset read from exactly the root given,
    else ``root`` or a folder below it."""
    if spec.is_root is None:  # generated data
        return False
    if spec.folder_name is None:
        return spec.is_root(root)
    return find_root(root, spec.folder_name, spec.is_root) is not None


def _one_of(items: list[str]) -> str:
    """``"A, B or C"``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def detect_dataset(root: str | Path) -> str:
    """The registered dataset (``drive``, ``glas``, ``hrf``, ``folder``, ...) whose layout ``root`` holds.

    A dataset read from exactly the root given (the generic ``images/`` + ``masks/`` layout, the output of
    ``convunext data prepare``) wins when ``root`` itself has its layout: a user's folder may also hold a copy of a
    public dataset. The others are then searched, in registration order, as
    :func:`~convunext.data.base.locate_root` does (at ``root`` and below it).

    Raises:
        ConvUNeXtError: ``root`` is missing or holds none of the layouts.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConvUNeXtError(f"{root}: dataset folder not found")
    # datasets read from exactly the root given first (False sorts before True)
    specs = sorted(
        (spec for spec in map(dataset_spec, detectable_datasets()) if spec.detected),
        key=lambda spec: spec.folder_name is not None,
    )
    for spec in specs:
        if _holds(spec, root):
            return spec.name
    distributed = [spec.title for spec in specs if spec.folder_name is not None]
    own = [spec.layout for spec in specs if spec.folder_name is None]
    raise ConvUNeXtError(
        f"{root}: not a recognised dataset (expected {_one_of(distributed)} as distributed, or {_one_of(own)}); "
        "name it with --dataset"
    )
