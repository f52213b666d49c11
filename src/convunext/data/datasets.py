"""One entry point for every dataset: :func:`open_dataset` and :func:`dataset_info`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..errors import ConvUNeXtError
from .base import DatasetInfo, check_split
from .drive import DRIVE_INFO, DriveDataset
from .folder import FolderDataset, folder_has_stats, folder_info_without_stats
from .glas import GlasDataset, glas_info, locate_glas
from .hrf import HrfDataset, hrf_info, locate_hrf
from .stats import compute_mean_std
from .synthetic import SyntheticDataset, synthetic_info

DATASETS = ("synthetic", "drive", "glas", "hrf", "folder")

_STATS_CACHE: dict[tuple[str, str], tuple[tuple[float, ...], tuple[float, ...]]] = {}


def list_datasets() -> list[str]:
    """Names accepted by :func:`open_dataset`."""
    return list(DATASETS)


def _check_name(name: str) -> str:
    key = str(name).lower()
    if key not in DATASETS:
        raise ConvUNeXtError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return key


def _check_kwargs(name: str, factory: Callable[..., Any], kwargs: dict[str, Any], reserved: set[str]) -> None:
    accepted = set(inspect.signature(factory).parameters) - reserved
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        options = ", ".join(sorted(accepted)) or "none"
        raise ConvUNeXtError(f"dataset {name!r}: unknown option {unknown[0]!r} (accepted: {options})")


def _cached_stats(
    key: str, root: Path, make: Callable[[], Any], reduce: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cache_key = (key, str(Path(root).resolve()))
    if cache_key not in _STATS_CACHE:
        _STATS_CACHE[cache_key] = compute_mean_std(make(), reduce=reduce)
    return _STATS_CACHE[cache_key]


def dataset_info(name: str, root: str | Path | None = None, **kwargs: Any) -> DatasetInfo:
    """The :class:`DatasetInfo` of a dataset without building it.

    DRIVE and the synthetic data use stored statistics (instant). GlaS, HRF and folders without mean/std in
    their ``dataset.json`` have them computed once per process from the ``trainval`` split (all official training
    images; HRF on every 4th row and column: a second or two) and cached in memory; nothing is written to disk.

    Args:
        name: ``"synthetic"``, ``"drive"``, ``"glas"``, ``"hrf"`` or ``"folder"``.
        root: the dataset's folder (ignored for ``"synthetic"``; required for ``"folder"``).
        **kwargs: ``task`` for synthetic, ``class_names`` for folder, ``skip_unannotated`` for HRF; others are
            ignored.
    """
    key = _check_name(name)
    if key == "synthetic":
        task = kwargs.get("task", "vessels")
        if task not in ("vessels", "glands"):
            raise ConvUNeXtError(f"synthetic dataset: unknown task {task!r}; expected one of vessels, glands")
        return synthetic_info(task)
    if key == "drive":
        return DRIVE_INFO
    if key == "glas":
        found = locate_glas(root)
        mean, std = _cached_stats("glas", found, lambda: GlasDataset(found, "trainval", check_sizes=False), reduce=1)
        return glas_info(mean, std)
    if key == "hrf":
        found = locate_hrf(root)
        skip = bool(kwargs.get("skip_unannotated", False))
        mean, std = _cached_stats(
            f"hrf-skip{skip}",
            found,
            lambda: HrfDataset(found, "trainval", check_sizes=False, skip_unannotated=skip),
            reduce=4,
        )
        return hrf_info(mean, std)
    if root is None:
        raise ConvUNeXtError("dataset 'folder' needs a root folder")
    folder = Path(root).expanduser()
    info = folder_info_without_stats(folder, kwargs.get("class_names"))
    if folder_has_stats(folder):
        return info
    mean, std = _cached_stats(
        "folder", folder, lambda: FolderDataset(folder, "trainval", info=info, check_sizes=False), reduce=1
    )
    return DatasetInfo(
        name=info.name,
        class_names=info.class_names,
        in_channels=info.in_channels,
        mean=mean,
        std=std,
        has_fov=info.has_fov,
    )


def open_dataset(name: str, root: str | Path | None = None, split: str = "train", **kwargs: Any) -> Dataset:
    """Open a dataset split; every item is a :data:`~convunext.data.Sample` and ``dataset.info`` its
    :class:`DatasetInfo`. No augmentation is applied (wrap with :class:`~convunext.data.TransformedDataset`).

    Args:
        name: ``"synthetic"``, ``"drive"``, ``"glas"``, ``"hrf"`` or ``"folder"`` (case-insensitive).
        root: the dataset's folder (or a folder containing ``DRIVE/``, ``GlaS/``, ``HRF/``); None for the
            synthetic data or :func:`~convunext.data.default_data_root`.
        split: ``"train"`` (official training images minus the fixed validation subset), ``"val"``, ``"test"``
            or ``"trainval"`` (all official training images).
        **kwargs: synthetic: ``num_images``, ``size``, ``seed``, ``task``, ``num_test``, ``cache``;
            drive: ``observer``; hrf: ``skip_unannotated``; folder: ``class_names``; all file datasets:
            ``check_sizes``.

    Raises:
        ConvUNeXtError: unknown name/split/option, or a missing or malformed dataset (the message names the file).
    """
    key = _check_name(name)
    check_split(split)
    if key == "synthetic":
        _check_kwargs(key, SyntheticDataset, kwargs, {"split"})
        return SyntheticDataset(split, **kwargs)
    if key == "drive":
        _check_kwargs(key, DriveDataset, kwargs, {"root", "split"})
        return DriveDataset(root, split, **kwargs)
    if key == "glas":
        _check_kwargs(key, GlasDataset, kwargs, {"root", "split", "info"})
        return GlasDataset(root, split, info=dataset_info("glas", root), **kwargs)
    if key == "hrf":
        _check_kwargs(key, HrfDataset, kwargs, {"root", "split", "info"})
        info = dataset_info("hrf", root, skip_unannotated=kwargs.get("skip_unannotated", False))
        return HrfDataset(root, split, info=info, **kwargs)
    if root is None:
        raise ConvUNeXtError("dataset 'folder' needs a root folder")
    _check_kwargs(key, FolderDataset, kwargs, {"root", "split", "info"})
    info = dataset_info("folder", root, class_names=kwargs.get("class_names"))
    return FolderDataset(root, split, info=info, **kwargs)


__all__ = ["DATASETS", "dataset_info", "list_datasets", "open_dataset"]
