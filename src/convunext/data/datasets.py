"""One entry point for every registered dataset (:mod:`convunext.data.registry`): :func:`open_dataset` and
:func:`dataset_info`."""

from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..errors import ConvUNeXtError
from .base import DatasetInfo, check_split
from .registry import DatasetSpec, dataset_spec
from .stats import compute_mean_std

_STATS_CACHE: dict[tuple[str, str, str], tuple[tuple[float, ...], tuple[float, ...]]] = {}


def dataset_info(name: str, root: str | Path | None = None, **options: Any) -> DatasetInfo:
    """The :class:`DatasetInfo` of a dataset without building it.

    DRIVE and the synthetic data use stored statistics (instant). GlaS, HRF and folders without mean/std in
    their ``dataset.json`` have them computed once per process from the ``trainval`` split (all official training
    images; HRF on every 4th row and column: a second or two) and cached in memory; nothing is written to disk
    (:attr:`DatasetSpec.stats_reduce <convunext.data.registry.DatasetSpec.stats_reduce>`).

    Args:
        name: a registered dataset (:func:`~convunext.data.list_datasets`), case-insensitive.
        root: the dataset's folder (ignored for ``"synthetic"``; required for ``"folder"``).
        **options: the dataset's options (:func:`open_dataset`); those its information depends on are used
            (``task`` for synthetic, ``class_names`` for folder, ``skip_unannotated`` for HRF), others are ignored.
    """
    spec = dataset_spec(name)
    accepted = spec.options()
    options = {key: value for key, value in options.items() if key in accepted}
    info_needs_root = callable(spec.info) and "root" in inspect.signature(spec.info).parameters
    found = spec.locate(root) if info_needs_root or spec.stats_reduce is not None else None
    if isinstance(spec.info, DatasetInfo):
        info = spec.info
    else:
        given = {"root": found, **options}
        info = spec.info(**{key: given[key] for key in inspect.signature(spec.info).parameters if key in given})
    if spec.stats_reduce is None or found is None:
        return info
    if spec.has_stored_stats is not None and spec.has_stored_stats(found):
        return info
    mean, std = _computed_stats(spec, found, info, options)
    return replace(info, mean=mean, std=std)


def _computed_stats(
    spec: DatasetSpec, root: Path, info: DatasetInfo, options: dict[str, Any]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std of the ``trainval`` split read with ``spec.stats_options`` (defaults filled in), once per process,
    dataset, folder and value of those options."""
    defaults = spec.options()
    chosen = {key: options.get(key, defaults[key]) for key in spec.stats_options}
    cache_key = (spec.name, str(root.resolve()), repr(sorted(chosen.items())))
    if cache_key not in _STATS_CACHE:
        trainval = _read(spec, root, "trainval", info, {**chosen, "check_sizes": False})
        _STATS_CACHE[cache_key] = compute_mean_std(trainval, reduce=spec.stats_reduce or 1)
    return _STATS_CACHE[cache_key]


def _read(
    spec: DatasetSpec, root: str | Path | None, split: str, info: DatasetInfo | None, options: dict[str, Any]
) -> Dataset:
    """Call the reader of ``spec`` with the arguments it takes (:attr:`DatasetSpec.reader`)."""
    arguments = {**options, "split": split}
    if spec.has_files:
        arguments["root"] = root
    if spec.takes_info:
        arguments["info"] = info
    return spec.reader(**arguments)


def open_dataset(name: str, root: str | Path | None = None, split: str = "train", **options: Any) -> Dataset:
    """Open a dataset split; every item is a :data:`~convunext.data.Sample` and ``dataset.info`` its
    :class:`DatasetInfo`. No augmentation is applied (wrap with :class:`~convunext.data.TransformedDataset`).

    Args:
        name: a registered dataset (:func:`~convunext.data.list_datasets`: ``"synthetic"``, ``"drive"``,
            ``"glas"``, ``"hrf"``, ``"folder"``), case-insensitive.
        root: the dataset's folder (or a folder containing ``DRIVE/``, ``GlaS/``, ``HRF/``); None for the
            synthetic data or :func:`~convunext.data.default_data_root`.
        split: ``"train"`` (official training images minus the fixed validation subset), ``"val"``, ``"test"``
            or ``"trainval"`` (all official training images).
        **options: the arguments of the dataset's reader (:meth:`DatasetSpec.options
            <convunext.data.registry.DatasetSpec.options>`). synthetic: ``num_images``, ``size``, ``seed``,
            ``task``, ``num_test``, ``cache``; drive: ``observer``; hrf: ``skip_unannotated``; folder:
            ``class_names``; all file datasets: ``check_sizes``.

    Raises:
        ConvUNeXtError: unknown name/split/option, or a missing or malformed dataset (the message names the file).
    """
    spec = dataset_spec(name)
    check_split(split)
    spec.check_root(root)
    accepted = spec.options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        listed = ", ".join(sorted(accepted)) or "none"
        raise ConvUNeXtError(f"dataset {spec.name!r}: unknown option {unknown[0]!r} (accepted: {listed})")
    info = dataset_info(spec.name, root, **options) if spec.takes_info else None
    return _read(spec, root, split, info, options)


__all__ = ["dataset_info", "open_dataset"]
