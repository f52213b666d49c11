"""Several retinal vessel datasets as one training set (``mixed``): by default DRIVE, STARE and HRF together, each
resized to one scale and sampled equally often.

A model learns vessels at the widths it is shown (:mod:`convunext.data.fov`): the three datasets show the retina at
fields of view 540 px (DRIVE), 649 px (STARE) and 3262 px (HRF) across. So every image of a source dataset is
resized by ``fov_diameter / (that dataset's median FOV diameter over its trainval split)`` — the image bilinear
(antialiased when shrinking), the mask and FOV nearest — and every item arrives at one field-of-view diameter. The
trainer records that diameter as the model's scale (``meta["scale"]["fov_diameter"]``), and ``predict`` and
``evaluate`` resize any photograph to it.

``fov_diameter`` defaults to the geometric mean of the sources' diameters, rounded to a pixel: the scale from which
the sources are resized least, a 2x enlargement counting as much as a 2x shrink (1046 px for DRIVE, STARE and HRF:
DRIVE x1.94, STARE x1.61, HRF x0.32, which keeps HRF's thinnest annotated vessels, about 3 px wide, near a pixel).

The ``train`` split visits every source equally often whatever its size: item ``i`` is item ``(i // n) % len`` of
source ``i % n`` (``n`` sources), and an epoch is ``n`` x the largest source's training images, so DRIVE's 16,
STARE's 8 and HRF's 19-20 images count equally. ``val``, ``test`` and ``trainval`` hold every image of every source
once, in source order. Names keep their dataset (``hrf/01_h``), so per-image reports say where each image is from.

The root is a folder holding the sources' folders (``DRIVE/``, ``STARE/``, ``HRF/``), each found there by its own
reader. The normalisation statistics are those of the equal-weight mixture of the sources' own
(:func:`mixture_mean_std`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConvUNeXtError
from .base import DatasetInfo, Sample, check_split, vessel_info
from .datasets import dataset_info, open_dataset
from .fov import dataset_fov_diameter
from .registry import DatasetSpec, dataset_spec, list_datasets, register_dataset
from .transforms import nearest_resize

__all__ = [
    "DEFAULT_DATASETS",
    "MixedDataset",
    "check_datasets",
    "default_fov_diameter",
    "is_mixed_root",
    "mixable_datasets",
    "mixed_info",
    "mixture_mean_std",
    "rescale_sample",
    "source_fov_diameter",
]

NAME = "mixed"
DEFAULT_DATASETS = ("drive", "stare", "hrf")
LAYOUT = "DRIVE/, STARE/ and HRF/ side by side"


def mixable_datasets() -> list[str]:
    """The registered datasets a mixture can hold, in registration order: the retinal vessel datasets read from
    files (:attr:`DatasetSpec.vessel_metrics <convunext.data.registry.DatasetSpec.vessel_metrics>`: background and
    vessel classes, scored inside a field of view)."""
    return [name for name in list_datasets() if dataset_spec(name).has_files and dataset_spec(name).vessel_metrics]


def check_datasets(datasets: Sequence[str]) -> tuple[str, ...]:
    """The registry names of ``datasets`` (lower case, in the order given).

    Raises:
        ConvUNeXtError: no dataset named, an unknown name, one that cannot be mixed (no field of view, other
            classes: GlaS, a folder, the synthetic data), or a name given twice.
    """
    mixable = mixable_datasets()
    expected = f"expected some of {', '.join(mixable)}"
    if isinstance(datasets, str) or not isinstance(datasets, Sequence) or not datasets:
        raise ConvUNeXtError(f"dataset {NAME!r}: datasets must list the datasets to mix, got {datasets!r}; {expected}")
    names: list[str] = []
    for given in datasets:
        name = str(given).lower()
        if name not in list_datasets():
            raise ConvUNeXtError(f"dataset {NAME!r}: unknown dataset {given!r} in datasets; {expected}")
        if name not in mixable:
            raise ConvUNeXtError(
                f"dataset {NAME!r}: {name!r} cannot be mixed: not a retinal vessel dataset with fields of view; "
                f"{expected}"
            )
        if name in names:
            raise ConvUNeXtError(f"dataset {NAME!r}: {name!r} is named twice in datasets")
        names.append(name)
    return tuple(names)


def is_mixed_root(path: Path) -> bool:
    """True when ``path`` holds the folders of :data:`DEFAULT_DATASETS` side by side (``DRIVE/``, ``STARE/``,
    ``HRF/``), each in its own layout."""
    specs = [dataset_spec(name) for name in DEFAULT_DATASETS]
    return all(s.is_root is not None and s.folder_name and s.is_root(path / s.folder_name) for s in specs)


def mixture_mean_std(infos: Sequence[DatasetInfo]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of the equal-weight mixture of datasets, from each one's own: the
    mean of the means, and the variance ``mean(std² + mean²) - mean²`` (the law of total variance); rounded to 4
    decimals as :func:`~convunext.data.compute_mean_std` rounds."""
    means = np.array([info.mean for info in infos], dtype=np.float64)
    stds = np.array([info.std for info in infos], dtype=np.float64)
    mean = means.mean(axis=0)
    std = np.sqrt(np.maximum((stds**2 + means**2).mean(axis=0) - mean**2, 0.0))
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def mixed_info(
    root: str | Path | None = None, datasets: Sequence[str] = DEFAULT_DATASETS, skip_unannotated: bool = False
) -> DatasetInfo:
    """:class:`~convunext.data.DatasetInfo` of the mixture of ``datasets`` under ``root``: background / vessel,
    3 channels, a field of view, and the statistics of :func:`mixture_mean_std` over the sources'
    (:func:`~convunext.data.dataset_info`, computed once per process)."""
    infos = [dataset_info(name, root, skip_unannotated=skip_unannotated) for name in check_datasets(datasets)]
    mean, std = mixture_mean_std(infos)
    return vessel_info(NAME, mean, std)


_DIAMETERS: dict[tuple[str, str, str], float] = {}


def source_fov_diameter(name: str, root: str | Path | None = None, **options: Any) -> float:
    """The median field-of-view diameter (pixels) of dataset ``name``'s ``trainval`` split
    (:func:`~convunext.data.fov.dataset_fov_diameter`), measured once per process, folder and value of the options
    that change that split (:attr:`DatasetSpec.stats_options
    <convunext.data.registry.DatasetSpec.stats_options>`: HRF's ``skip_unannotated``); other options are ignored.

    Raises:
        ConvUNeXtError: the dataset is not found under ``root``, or has no field of view.
    """
    spec = dataset_spec(name)
    folder = spec.locate(root)
    chosen = {key: value for key, value in options.items() if key in spec.stats_options}
    key = (spec.name, str(folder), repr(sorted(chosen.items())))
    if key not in _DIAMETERS:
        diameter = dataset_fov_diameter(open_dataset(spec.name, folder, "trainval", check_sizes=False, **chosen))
        if diameter is None:
            raise ConvUNeXtError(f"{folder}: {spec.title} has no field of view to measure")
        _DIAMETERS[key] = diameter
    return _DIAMETERS[key]


def default_fov_diameter(diameters: Sequence[float]) -> float:
    """The common field-of-view diameter of a mixture whose sources have ``diameters`` (pixels): their geometric
    mean, rounded to a pixel (see the module docstring)."""
    return float(round(math.exp(sum(math.log(d) for d in diameters) / len(diameters))))


def rescale_sample(sample: Sample, factor: float) -> Sample:
    """``sample`` with its sides resized by ``factor`` (each side ``max(1, round(side x factor))``, as
    :class:`~convunext.inference.Inferer` resizes): the ``C x H x W`` image bilinear, antialiased when shrinking,
    the ``H x W`` mask and FOV nearest (class ids and the ignore value are never blended). ``sample`` itself when
    the size does not change."""
    image = sample["image"]
    height, width = image.shape[-2:]
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    if size == (height, width):
        return sample
    resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=factor < 1)
    return {
        **sample,
        "image": resized[0],
        "mask": nearest_resize(sample["mask"], *size),
        "fov": nearest_resize(sample["fov"], *size),
    }


def _check_fov_diameter(value: Any) -> float:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value <= 0:
        raise ConvUNeXtError(f"dataset {NAME!r}: fov_diameter must be a positive number of pixels, got {value!r}")
    return float(value)


class MixedDataset(Dataset):
    """Several retinal vessel datasets as one, scale-matched and balanced (see the module docstring).

    Args:
        root: the folder holding the sources' folders (``DRIVE/``, ``STARE/``, ``HRF/``; each found as its own reader
            finds it); None: :func:`~convunext.data.default_data_root`.
        split: ``"train"`` (balanced: every source equally often, ``len(datasets)`` x the largest source's
            training images), ``"val"``, ``"test"`` or ``"trainval"`` (every image of every source once).
        info: the :class:`~convunext.data.DatasetInfo` to attach (the registry passes :func:`mixed_info`'s).
        datasets: the registry names of the sources (:func:`mixable_datasets`), in the order items are drawn.
        fov_diameter: the field-of-view diameter (pixels) every item is resized to; None:
            :func:`default_fov_diameter` of the sources' (1046 px for DRIVE, STARE and HRF).
        skip_unannotated: HRF's option: go on without the images this copy has no annotation for (named on stderr).
        check_sizes: the sources' option: check that each image and mask have the same size when read.

    Attributes:
        datasets: the sources' names; sources: their datasets (this split, at their own scale).
        source_diameters: ``{name: median FOV diameter of its trainval split}`` (:func:`source_fov_diameter`).
        fov_diameter: the common diameter; factors: ``{name: resize factor}`` = ``fov_diameter / source_diameter``.

    Items shrunk to the common scale (HRF's 3504x2336 photographs, whose decoding takes a few tenths of a second)
    are kept in memory once read, with the mask as uint8 (about 10 MB an HRF image at 1046 px); an enlarged item
    is cheaper to read again than to hold. Each read returns copies, so a consumer may change them in place.

    Raises:
        ConvUNeXtError: a bad ``datasets`` (:func:`check_datasets`) or ``fov_diameter``, or a source missing
            under ``root`` or malformed (its reader's message, naming the file).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        info: DatasetInfo | None = None,
        datasets: Sequence[str] = DEFAULT_DATASETS,
        fov_diameter: float | None = None,
        skip_unannotated: bool = False,
        check_sizes: bool = True,
    ) -> None:
        self.split = check_split(split)
        self.datasets = check_datasets(datasets)
        self.root = root
        options = {"skip_unannotated": skip_unannotated, "check_sizes": check_sizes}
        self.sources = [
            open_dataset(name, root, split, **{k: v for k, v in options.items() if k in dataset_spec(name).options()})
            for name in self.datasets
        ]
        self.source_diameters = {
            name: source_fov_diameter(name, root, skip_unannotated=skip_unannotated) for name in self.datasets
        }
        self.fov_diameter = (
            default_fov_diameter(list(self.source_diameters.values()))
            if fov_diameter is None
            else _check_fov_diameter(fov_diameter)
        )
        self.factors = {name: self.fov_diameter / diameter for name, diameter in self.source_diameters.items()}
        self.info = info or mixed_info(root, self.datasets, skip_unannotated)
        self.balanced = split == "train"
        self._offsets = np.cumsum([0] + [len(source) for source in self.sources])
        self._cache: dict[tuple[int, int], Sample] = {}

    def __len__(self) -> int:
        if self.balanced:
            return len(self.sources) * max(len(source) for source in self.sources)
        return int(self._offsets[-1])

    def source_item(self, index: int) -> tuple[int, int]:
        """``(source, item)`` of item ``index``: the position of its source in :attr:`datasets`, and its index
        there."""
        if self.balanced:
            source = index % len(self.sources)
            return source, (index // len(self.sources)) % len(self.sources[source])
        source = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return source, index - int(self._offsets[source])

    @property
    def names(self) -> list[str]:
        """Item names (``dataset/stem``) in dataset order, without reading any image."""
        names = []
        for index in range(len(self)):
            source, item = self.source_item(index)
            names.append(f"{self.datasets[source]}/{self.sources[source].names[item]}")
        return names

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        key = self.source_item(index)
        sample = self._cache.get(key)
        if sample is None:
            source, item = key
            name = self.datasets[source]
            raw = self.sources[source][item]
            sample = {**rescale_sample(raw, self.factors[name]), "name": f"{name}/{raw['name']}"}
            if self.factors[name] >= 1:
                return sample
            sample = self._cache[key] = {**sample, "mask": sample["mask"].to(torch.uint8)}
        return {**sample, "image": sample["image"].clone(), "mask": sample["mask"].long(), "fov": sample["fov"].clone()}

    def __repr__(self) -> str:
        sources = ", ".join(
            f"{name} x{self.factors[name]:.3f} ({len(source)})" for name, source in zip(self.datasets, self.sources)
        )
        return (
            f"MixedDataset(root={str(self.root)!r}, split={self.split!r}, items={len(self)}, "
            f"fov_diameter={self.fov_diameter:g}: {sources})"
        )


register_dataset(
    DatasetSpec(
        name=NAME,
        title="Mixed",
        description="several vessel datasets as one (default DRIVE, STARE, HRF): one FOV scale, sampled equally",
        reader=MixedDataset,
        info=mixed_info,
        is_root=is_mixed_root,
        layout=LAYOUT,
        detected=False,
    )
)
