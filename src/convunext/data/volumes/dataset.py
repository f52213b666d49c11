"""The slices of a volume dataset as 2D samples: nnU-Net's ``2d`` configuration, the paper's CT experiment.

:class:`VolumeSliceDataset` reads a Decathlon, nnU-Net v2 or plain folder of NIfTI volumes
(:mod:`~convunext.data.volumes.layout`) and serves every slice along the through-plane axis as a
:data:`~convunext.data.Sample`: ``image`` ``k*C x H x W`` already normalised (:class:`VolumeSettings`; the
dataset's :class:`~convunext.data.DatasetInfo` then has mean 0 and std 1, so the usual transforms leave the
values alone), ``mask`` ``H x W``, ``fov`` all True, ``name`` ``"CASE/S"`` (``S`` the slice index, 3 digits).

* **Splits are by volume**, never by slice: the cases are split as a folder dataset's images are (every fifth case,
  sorted by name, is a test case, every fifth of the rest a validation case; or the folder's ``splits.json``
  listing case names), so no volume has slices on both sides.
* **Foreground oversampling** (``train`` only): besides every slice once, the epoch draws slices that hold
  foreground, so that a ``foreground_fraction`` of its items do at least (nnU-Net forces a third of each batch).
* **Normalisation** per channel, from its modality (:mod:`~convunext.data.volumes.normalization`): CT over the
  training volumes' foreground (or the user's ``window``), anything else per volume.

Every case is checked when the dataset opens (:func:`~convunext.data.volumes.read_case_label`): its label is
decoded (label values are whole numbers among the declared classes), its images' shapes and affines are read from
their headers and must agree with it; an error names the file. Image voxels are decoded when used (``validate``
decodes them all) and the most recent ``cache_volumes`` volumes kept in memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ...errors import ConvUNeXtError
from ..base import DatasetInfo, Sample, check_split
from ..folder import folder_splits
from ..registry import DatasetSpec, register_dataset
from .cases import read_case, read_case_label
from .layout import VolumeCase, VolumeLayout, is_volume_root, read_layout
from .nifti import nifti_spacing
from .normalization import IntensityNormalization, fit_ct_normalization, parse_window
from .prepare import prepare_volumes
from .slicing import VolumeSettings, check_context, context_stack, largest_spacing_axis, to_slices

__all__ = ["VolumeSliceDataset", "case_split", "layout_info", "volume_info"]

DEFAULT_FOREGROUND_FRACTION = 1 / 3


def case_split(layout: VolumeLayout, split: str) -> list[VolumeCase]:
    """The labelled cases of ``split`` (by volume; see the module docstring)."""
    check_split(split)
    names = folder_splits(layout.root, [case.name for case in layout.cases]).get(split)
    if not names:
        raise ConvUNeXtError(f"{layout.root}: split {split!r} holds no volume ({len(layout.cases)} labelled cases)")
    by_name = {case.name: case for case in layout.cases}
    return [by_name[name] for name in names]


def _median_spacing(cases: Sequence[VolumeCase]) -> tuple[float, float, float]:
    """The median voxel size of ``cases``' first channels, from their headers."""
    spacings = np.array([nifti_spacing(case.images[0]) for case in cases])
    return tuple(float(v) for v in np.median(spacings, axis=0))  # type: ignore[return-value]


_SETTINGS_CACHE: dict[tuple[Any, ...], VolumeSettings] = {}


def volume_settings(
    layout: VolumeLayout, slice_axis: int | None = None, context: int = 1, window: str | Sequence[float] | None = None
) -> VolumeSettings:
    """The slicing and normalisation of ``layout``'s training cases (cached per process and options).

    Args:
        slice_axis: None: the axis of largest median spacing of the training volumes.
        context: slices per input (odd).
        window: ``"LOW,HIGH"``: clip CT channels to it (instead of the foreground percentiles).
    """
    check_context(context)
    window_range = parse_window(window)
    if slice_axis is not None and slice_axis not in (0, 1, 2):
        raise ConvUNeXtError(f"slice_axis {slice_axis!r}: expected 0, 1, 2 or None (the axis of largest spacing)")
    key = (str(layout.root.resolve()), slice_axis, context, window_range)
    if key in _SETTINGS_CACHE:
        return _SETTINGS_CACHE[key]
    train = case_split(layout, "train")
    spacing = _median_spacing(train)
    normalizations = []
    for channel, is_ct in enumerate(layout.is_ct):
        if is_ct or window_range is not None:
            pairs = []
            for case in train:
                images, label = read_case(case, layout.num_classes)
                pairs.append((images[channel].array, label.array))  # type: ignore[union-attr]
            normalizations.append(fit_ct_normalization(pairs, window_range))
        else:
            normalizations.append(IntensityNormalization("zscore"))
    settings = VolumeSettings(
        slice_axis=largest_spacing_axis(spacing) if slice_axis is None else slice_axis,
        context=context,
        modalities=layout.modalities,
        normalizations=tuple(normalizations),
        spacing=spacing,
    )
    _SETTINGS_CACHE[key] = settings
    return settings


def volume_info(
    root: Path, slice_axis: int | None = None, context: int = 1, window: str | Sequence[float] | None = None
) -> DatasetInfo:
    """The :class:`~convunext.data.DatasetInfo` of the volume dataset in ``root``: its classes, ``context`` x
    channels, mean 0 / std 1 (the slices come normalised) and ``volume`` = the :class:`VolumeSettings` record."""
    layout = read_layout(root)
    return layout_info(layout, volume_settings(layout, slice_axis, context, window))


def layout_info(layout: VolumeLayout, settings: VolumeSettings) -> DatasetInfo:
    """The :class:`~convunext.data.DatasetInfo` of ``layout``'s slices made by ``settings`` (its own, or a
    checkpoint's): the layout's classes, ``settings``' input channels, mean 0 / std 1 and ``volume`` = its record."""
    channels = settings.in_channels
    return DatasetInfo(
        name=layout.name,
        class_names=list(layout.class_names),
        in_channels=channels,
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
        volume=settings.to_dict(),
    )


class VolumeSliceDataset(Dataset):
    """The slices of one split of a volume dataset (see the module docstring).

    Args:
        root: the dataset folder (Decathlon, nnU-Net v2 raw or ``images/`` + ``labels/``).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"trainval"`` (cases, not slices).
        info: the dataset's info (:func:`volume_info`, which the registry passes); None: computed.
        slice_axis: the axis to slice along; None: the axis of largest spacing.
        context: slices per input (odd; 3 or 5 for 2.5D).
        window: ``"LOW,HIGH"`` clip range for CT channels (e.g. ``"-160,240"``).
        foreground_fraction: the share of the training epoch's items that are slices holding foreground (the
            epoch gets extra foreground slices to reach it; 0 = every slice once, nothing added).
        cache_volumes: decoded volumes kept in memory.

    Attributes:
        layout, settings, cases: the folder, the slicing/normalisation record, this split's cases.
        slices: ``(case index, slice index)`` of every slice; foreground: the indices into ``slices`` of those
            that hold foreground.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        info: DatasetInfo | None = None,
        slice_axis: int | None = None,
        context: int = 1,
        window: str | None = None,
        foreground_fraction: float = DEFAULT_FOREGROUND_FRACTION,
        cache_volumes: int = 8,
    ) -> None:
        self.split = check_split(split)
        self.layout = read_layout(root)
        self.root = self.layout.root
        self.info = info if info is not None else volume_info(self.root, slice_axis, context, window)
        if self.info.volume is None:
            raise ValueError("info holds no volume settings")
        self.settings = VolumeSettings.from_dict(self.info.volume)
        if not 0 <= foreground_fraction < 1:
            raise ConvUNeXtError(f"foreground_fraction {foreground_fraction!r}: expected a value in [0, 1)")
        self.cases = case_split(self.layout, split)
        self.cache_volumes = max(1, int(cache_volumes))
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.slices: list[tuple[int, int]] = []
        self.foreground: list[int] = []
        for case_index, case in enumerate(self.cases):
            label = read_case_label(case, self.info.num_classes)
            slices = to_slices(label.array, self.settings.slice_axis)
            has_foreground = slices.reshape(slices.shape[0], -1).any(axis=1)
            for slice_index in range(slices.shape[0]):
                if has_foreground[slice_index]:
                    self.foreground.append(len(self.slices))
                self.slices.append((case_index, slice_index))
        extra = 0
        if split == "train" and self.foreground and foreground_fraction > 0:
            already = len(self.foreground) / len(self.slices)
            if already < foreground_fraction:
                # (F + x) / (N + x) = f  ->  x = (f N - F) / (1 - f)
                extra = round(
                    (foreground_fraction * len(self.slices) - len(self.foreground)) / (1 - foreground_fraction)
                )
        self.extra_foreground = extra

    @property
    def names(self) -> list[str]:
        return [self._name(index) for index in range(len(self))]

    @property
    def case_names(self) -> list[str]:
        return [case.name for case in self.cases]

    def __len__(self) -> int:
        return len(self.slices) + self.extra_foreground

    def slice_of(self, index: int) -> tuple[int, int]:
        """``(case index, slice index)`` of item ``index`` (the extra items cycle through the foreground slices)."""
        if index >= len(self.slices):
            index = self.foreground[(index - len(self.slices)) % len(self.foreground)]
        return self.slices[index]

    def _name(self, index: int) -> str:
        case_index, slice_index = self.slice_of(index)
        return f"{self.cases[case_index].name}/{slice_index:03d}"

    def volume(self, case_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Case ``case_index``'s normalised image ``C x S x H x W`` float32 and label ``S x H x W`` uint8, slice axis
        first (cached)."""
        if case_index in self._cache:
            self._cache.move_to_end(case_index)
            return self._cache[case_index]
        images, label = read_case(self.cases[case_index], self.info.num_classes)
        axis = self.settings.slice_axis
        image = to_slices(self.settings.normalize([volume.array for volume in images]), axis)
        labels = to_slices(label.array, axis)  # type: ignore[union-attr]
        entry = (np.ascontiguousarray(image), np.ascontiguousarray(labels))
        self._cache[case_index] = entry
        if len(self._cache) > self.cache_volumes:
            self._cache.popitem(last=False)
        return entry

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        case_index, slice_index = self.slice_of(index)
        image, labels = self.volume(case_index)
        stack = context_stack(image, slice_index, self.settings.context)
        mask = torch.from_numpy(labels[slice_index].astype(np.int64))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(stack)),
            "mask": mask,
            "fov": torch.ones(mask.shape, dtype=torch.bool),
            "name": self._name(index),
        }

    def validate(self) -> None:
        """Decode every volume once: the constructor checked the labels, and the images' shapes and affines from
        their headers; this finds images whose voxels cannot be decoded or are not finite."""
        for case_index in range(len(self.cases)):
            self.volume(case_index)

    def __repr__(self) -> str:
        return (
            f"VolumeSliceDataset(root={str(self.root)!r}, split={self.split!r}, volumes={len(self.cases)}, "
            f"slices={len(self.slices)}, extra_foreground={self.extra_foreground})"
        )


register_dataset(
    DatasetSpec(
        name="volumes",
        title="Volumes",
        description="CT / MR volumes (NIfTI) sliced for a 2D model: a Decathlon or nnU-Net v2 raw folder "
        "(dataset.json, imagesTr/, labelsTr/), or images/ + labels/",
        reader=VolumeSliceDataset,
        info=volume_info,
        is_root=is_volume_root,
        layout="dataset.json with imagesTr/ and labelsTr/ (Decathlon, nnU-Net v2), or images/ + labels/ of NIfTI "
        "volumes",
        preset="volumes",
        convert=prepare_volumes,
    )
)
