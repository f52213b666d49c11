"""One registry for every dataset: :func:`register_dataset`, :func:`dataset_spec` and :func:`list_datasets`.

A dataset module (``drive.py``, ``glas.py``, ...) holds its reader and describes the dataset in one
:class:`DatasetSpec`, registered on import. :func:`~convunext.data.open_dataset`,
:func:`~convunext.data.dataset_info`, :func:`~convunext.data.detect_dataset`, ``convunext data`` and
``convunext reproduce`` learn everything about a dataset from its spec: a new dataset is one file and one
registration.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..errors import ConvUNeXtError
from .base import DatasetInfo, locate_root

__all__ = ["DatasetSpec", "dataset_spec", "list_datasets", "register_dataset"]

RESERVED_ARGUMENTS = ("root", "split", "info")
"""The reader arguments the registry fills in itself; the reader's other arguments are the dataset's options."""


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the package knows about one dataset.

    Attributes:
        name: the registry name, lower case (``open_dataset(name, ...)``, ``data.name`` of a config).
        title: the name as reports and messages write it (``"DRIVE"``).
        description: one line for ``convunext data --help`` and the docs.
        reader: the dataset class (or a factory) returning :data:`~convunext.data.Sample` items. It is called with
            keywords: ``split``; ``root`` (the folder the user gave, or None) unless the dataset is generated;
            ``info`` if it has that argument; and the user's options, which are its other arguments
            (:meth:`options`).
        info: the dataset's :class:`~convunext.data.DatasetInfo`, or a function returning it, called with those
            of ``root`` (the dataset's own folder, :meth:`locate`) and the user's options that it names as
            arguments (``task``, ``class_names``, ...).
        is_root: whether a folder itself holds the dataset's files in their layout; None for a generated dataset
            (no files, no root).
        folder_name: the dataset's folder under :func:`~convunext.data.default_data_root` (``"DRIVE"``), where it is
            read from when no root is given, and which is looked for at and below a given root
            (:func:`~convunext.data.base.locate_root`); None: the dataset is read from exactly the root given,
            which is then required.
        layout: the layout in words, for messages (``"images/, manual1/ and mask/ folders"``).
        stats_reduce: None: ``info`` holds the dataset's mean/std. A number: they are computed from the
            ``trainval`` split on every ``stats_reduce``-th row and column, once per process and folder.
        stats_options: the options that change the ``trainval`` images (HRF's ``skip_unannotated``): given to the
            reader that computes the statistics, and part of their cache key.
        has_stored_stats: with ``stats_reduce``: whether the dataset's folder holds its own mean/std (a folder's
            ``dataset.json``), which ``info`` then returns and nothing is computed.
        split_file: the fixed split lists it is read with, ``data/splits/<split_file>.json``; None when the splits
            come with the data (a folder's ``splits.json``), which may then lack ``val`` or ``test``.
        locate_download: for ``convunext data prepare``: the dataset's own folder inside a download (a folder or an
            unpacked zip); None: data prepare does not convert this dataset. A preparable dataset's reader is a
            :class:`~convunext.data.FileDataset`.
        convert: for ``convunext data prepare``, a converter of the dataset's own, for a dataset that is not made of
            2D images: ``convert(source, out, progress, source_name)`` writes the prepared dataset into ``out``
            (``source``: the download's folder, an archive already extracted; ``source_name``: the name the user
            gave) and returns the ``dataset.json`` it wrote. :func:`~convunext.data.prepare_dataset` makes the
            output appear complete or not at all around it.
        preset: the training preset ``configs/<preset>.yaml`` of this dataset, if there is one (a reproduction
            trains on the datasets that have one).
        vessel_metrics: a retinal vessel dataset: reproduction reports add sensitivity, specificity, accuracy and
            AUC inside the field of view.
        detected: whether :func:`~convunext.data.detect_dataset` names it for a folder that holds its layout; False
            for a layout made of others' (``mixed``: a folder holding DRIVE/, STARE/ and HRF/ is named with
            ``--dataset mixed``, and otherwise detected as the first of them).
        second_observer: the reader options that give a second observer's annotations of the same images
            (``{"observer": 2}``), scored against the first's as a human reference
            (:func:`~convunext.evaluation.observers.second_observer_metrics`); None: the dataset has none.
    """

    name: str
    title: str
    description: str
    reader: Callable[..., Dataset]
    info: DatasetInfo | Callable[..., DatasetInfo]
    is_root: Callable[[Path], bool] | None = None
    folder_name: str | None = None
    layout: str = ""
    stats_reduce: int | None = None
    stats_options: tuple[str, ...] = ()
    has_stored_stats: Callable[[Path], bool] | None = None
    split_file: str | None = None
    locate_download: Callable[[Path], Path] | None = None
    convert: Callable[[Path, Path, bool, str], dict[str, Any]] | None = None
    preset: str | None = None
    vessel_metrics: bool = False
    detected: bool = True
    second_observer: Mapping[str, Any] | None = field(default=None, hash=False)

    @property
    def has_files(self) -> bool:
        """Whether the dataset is read from files (False for generated data, which takes no root)."""
        return self.is_root is not None

    @property
    def preparable(self) -> bool:
        """Whether ``convunext data prepare`` converts this dataset (:attr:`locate_download` or :attr:`convert`)."""
        return self.locate_download is not None or self.convert is not None

    @property
    def needs_root(self) -> bool:
        """Whether a root must be given (a dataset read from exactly the folder given)."""
        return self.has_files and self.folder_name is None

    @property
    def takes_info(self) -> bool:
        """Whether the reader is given its :class:`~convunext.data.DatasetInfo` (computed statistics)."""
        return "info" in inspect.signature(self.reader).parameters

    def options(self) -> dict[str, Any]:
        """The options the reader accepts, with their defaults (``inspect.Parameter.empty`` if none)."""
        return {
            p.name: p.default
            for p in inspect.signature(self.reader).parameters.values()
            if p.name not in RESERVED_ARGUMENTS
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        }

    def check_root(self, root: str | Path | None) -> None:
        """Refuse a missing root where one is required (:attr:`needs_root`)."""
        if root is None and self.needs_root:
            raise ConvUNeXtError(f"dataset {self.name!r} needs a root folder")

    def locate(self, root: str | Path | None) -> Path | None:
        """The dataset's own folder from the root a user gives: None for a generated dataset; ``root`` itself for
        one read from exactly the root given; else the folder :func:`~convunext.data.base.locate_root` finds at or
        below ``root`` (None: under the default data root).

        Raises:
            ConvUNeXtError: a required root is missing, or no copy of the dataset is found (naming ``layout``).
        """
        if self.is_root is None:
            return None
        self.check_root(root)
        if self.folder_name is None:
            return Path(root).expanduser()  # type: ignore[arg-type]  # check_root refused None
        return locate_root(root, self.folder_name, self.is_root, self.folder_name, self.layout)


_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the registry (:func:`list_datasets` keeps the registration order) and return it.

    Raises:
        ValueError: the name is not lower case or is already registered, or ``stats_options`` or
            ``second_observer`` names an argument the reader does not take.
    """
    if spec.name != spec.name.lower():
        raise ValueError(f"dataset name {spec.name!r} must be lower case")
    if spec.name in _REGISTRY:
        raise ValueError(f"dataset name {spec.name!r} is already registered")
    for what, names in (("stats option", spec.stats_options), ("second-observer option", spec.second_observer or ())):
        unknown = sorted(set(names) - set(spec.options()))
        if unknown:
            raise ValueError(f"dataset {spec.name!r}: {what} {unknown[0]!r} is not an argument of its reader")
    _REGISTRY[spec.name] = spec
    return spec


def list_datasets() -> list[str]:
    """Names of every registered dataset, in registration order (synthetic, drive, glas, hrf, stare, chase_db1,
    folder, then any registered later)."""
    return list(_REGISTRY)


def dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of dataset ``name`` (case-insensitive).

    Raises:
        ConvUNeXtError: an unknown name (the message lists the registered names).
    """
    spec = _REGISTRY.get(str(name).lower())
    if spec is None:
        raise ConvUNeXtError(f"unknown dataset {name!r}; expected one of {', '.join(_REGISTRY)}")
    return spec
