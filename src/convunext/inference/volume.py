"""Segment CT and MR volumes with a 2D model trained on their slices: the API behind ``convunext predict`` on a
NIfTI file or a DICOM folder.

>>> predictor = VolumePredictor.from_checkpoint("runs/hippocampus")         # doctest: +SKIP
>>> volume, result = predictor.predict_path("scan.nii.gz")                  # or a DICOM series folder
>>> result.labels.array.shape == volume.shape, result.probabilities.shape   # (True, (K, I, J, K'))

The volume is normalised and sliced exactly as the checkpoint's training data was (its
:class:`~convunext.data.volumes.VolumeSettings`: slice axis, 2.5D context, intensity normalisation), its slices run
through the model in batches (the predictor's :class:`~convunext.inference.sliding_window.Inferer`, fast path
included), and the label volume comes back on the input's exact geometry: written as NIfTI, it has the input's
affine (and, for a NIfTI input, its header).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom.misc
import torch

from ..checkpoint import Checkpoint
from ..data.volumes import Volume, VolumeSettings, is_nifti_path, nifti_bytes, nifti_stem, read_volume
from ..data.volumes.slicing import context_stack, from_slices, to_slices
from ..errors import ConvUNeXtError
from ..utils.io import atomic_write_files
from .prediction_folder import PREDICTIONS_MARKER, PredictionFolder, distinct_names, png_bytes
from .predictor import PREDICT_TILE_SIZE, Predictor, open_checkpoint, overlay
from .sliding_window import Inferer
from .threshold import ThresholdSetting, predicted_labels

__all__ = [
    "VOLUME_OUTPUT_SUFFIXES",
    "VolumePrediction",
    "VolumePredictionFolder",
    "VolumePredictor",
    "expand_volume_inputs",
    "is_volume_input",
    "slice_montage",
    "volume_name",
]

VOLUME_OUTPUT_SUFFIXES = ("_mask.nii.gz", "_prob.nii.gz", "_overlay.png")
"""What a volume's outputs' names end with: the label volume, the probabilities, the overlay of three slices."""
SLICE_BATCH = 16
"""Slices per forward pass (memory stays bounded: the inferer tiles slices larger than its tile size)."""


def is_volume_input(path: str | Path) -> bool:
    """Whether ``path`` is a volume: a NIfTI file, or a folder holding DICOM files (``.dcm``, or files that start
    with the DICOM preamble)."""
    path = Path(path)
    if path.is_file():
        return path.name.lower().endswith((".nii", ".nii.gz"))
    if not path.is_dir():
        return False
    for child in sorted(path.iterdir())[:64]:
        if child.is_file() and (child.suffix.lower() == ".dcm" or pydicom.misc.is_dicom(child)):
            return True
    return False


@dataclass
class VolumePrediction:
    """One volume's result: ``probabilities`` ``K x I x J x K'`` float32 (softmax, in the volume's voxel order) and
    ``labels``, a :class:`~convunext.data.volumes.Volume` of uint8 class ids on the input's geometry."""

    probabilities: np.ndarray
    labels: Volume
    threshold: float | None = None


class VolumePredictor:
    """A checkpoint trained on slices of volumes, ready to segment volumes.

    Args:
        predictor: the model, run by its inferer (its mean/std are the identity: slices come normalised).
        settings: the checkpoint's slicing and normalisation.
        slice_batch: slices per forward pass.
    """

    def __init__(self, predictor: Predictor, settings: VolumeSettings, slice_batch: int = SLICE_BATCH) -> None:
        self.predictor = predictor
        self.settings = settings
        self.slice_batch = max(1, int(slice_batch))

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | Checkpoint,
        inferer: Inferer | None = None,
        threshold: ThresholdSetting = "auto",
        slice_batch: int = SLICE_BATCH,
    ) -> VolumePredictor:
        """The predictor of a checkpoint trained on volumes (:class:`~convunext.inference.predictor.Predictor`'s
        arguments).

        Raises:
            ConvUNeXtError: the checkpoint was trained on 2D images (it has no volume settings).
        """
        checkpoint = open_checkpoint(path)
        if checkpoint.volume is None:
            raise ConvUNeXtError(
                f"{checkpoint.path}: trained on 2D images, not on slices of volumes; it cannot segment a volume"
            )
        inferer = inferer or Inferer(tile_size=PREDICT_TILE_SIZE)
        predictor = Predictor.from_checkpoint(checkpoint, inferer, threshold=threshold, scale="off")
        return cls(predictor, VolumeSettings.from_dict(checkpoint.volume), slice_batch)

    @torch.inference_mode()
    def predict(self, channels: Sequence[Volume]) -> VolumePrediction:
        """Segment one volume given as its channels (one :class:`~convunext.data.volumes.Volume` each, same
        geometry; one for a single-modality scan).

        Raises:
            ConvUNeXtError: the wrong number of channels, channels of different shapes, or a model output that is
                not finite (naming the volume).
        """
        first = channels[0]
        if any(channel.shape != first.shape for channel in channels[1:]):
            raise ConvUNeXtError(f"{first.source}: its channels have different shapes")
        axis = self.settings.slice_axis
        image = to_slices(self.settings.normalize([channel.array for channel in channels]), axis)  # C x S x H x W
        count = image.shape[1]
        outputs = []
        for start in range(0, count, self.slice_batch):
            stop = min(count, start + self.slice_batch)
            batch = np.stack([context_stack(image, index, self.settings.context) for index in range(start, stop)])
            outputs.append(self.predictor.inferer(self.predictor.model, torch.from_numpy(batch)))
        per_slice = torch.cat(outputs)  # S x K x H x W
        if not torch.isfinite(per_slice).all():
            raise ConvUNeXtError(f"{first.source}: the model's output holds NaN or Inf; nothing was written for it")
        labels = predicted_labels(per_slice, self.predictor.threshold)  # S x H x W
        probabilities = per_slice.permute(1, 0, 2, 3)  # K x S x H x W
        labels_volume = from_slices(labels.to(torch.uint8).numpy(), axis)
        return VolumePrediction(
            probabilities=np.ascontiguousarray(from_slices(probabilities.numpy(), axis)),
            labels=first.with_array(np.ascontiguousarray(labels_volume)),
            threshold=self.predictor.threshold,
        )

    def predict_path(self, path: str | Path) -> tuple[Volume, VolumePrediction]:
        """Read a NIfTI file or a DICOM series folder and segment it; returns (volume, prediction).

        Raises:
            ConvUNeXtError: an unreadable volume (naming the file), or a model of several input channels (give
                :meth:`predict` the channels).
        """
        if len(self.settings.modalities) != 1:
            raise ConvUNeXtError(
                f"{path}: the model takes {len(self.settings.modalities)} channels "
                f"({', '.join(self.settings.modalities)}); segment the case with VolumePredictor.predict"
            )
        volume = read_volume(path)
        return volume, self.predict([volume])


def volume_name(path: Path) -> str:
    """The name of a volume input's outputs: a NIfTI file's name without ``.nii(.gz)``, a DICOM folder's name."""
    return nifti_stem(path) if path.is_file() else path.name


def expand_volume_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """NIfTI files and DICOM series folders named directly, plus the NIfTI files inside named folders that are not
    DICOM series (sorted), each once.

    Raises:
        ConvUNeXtError: a missing input, a folder with neither, a ``convunext predict`` output folder, or two inputs
            of the same name (their outputs would overwrite each other).
    """
    found: dict[Path, Path] = {}
    for item in map(Path, inputs):
        folder = item if item.is_dir() else item.parent
        if (folder / PREDICTIONS_MARKER).is_file():
            raise ConvUNeXtError(f"{item}: convunext predict outputs, not input volumes; give the volumes themselves")
        if not item.exists():
            raise ConvUNeXtError(f"{item}: no such file or folder")
        if is_volume_input(item):
            paths = [item]
        elif item.is_dir():
            paths = sorted(path for path in item.iterdir() if path.is_file() and is_nifti_path(path))
            if not paths:
                raise ConvUNeXtError(f"{item}: folder holds no NIfTI volume (.nii, .nii.gz) and no DICOM series")
        else:
            raise ConvUNeXtError(f"{item}: not a volume (expected a .nii / .nii.gz file or a DICOM series folder)")
        for path in paths:
            found.setdefault(path.resolve(), path)
    return distinct_names(list(found.values()), volume_name)


def slice_montage(
    image: Volume, labels: Sequence[np.ndarray], slice_axis: int, count: int = 3, min_height: int = 256
) -> np.ndarray:
    """``count`` slices through the foreground of the first of ``labels`` (else through the volume) of ``image``,
    each label array (``I x J x K``) overlaid in its own row: ``rows*H x count*W x 3`` uint8, enlarged by a whole
    factor (nearest) until it is at least ``min_height`` pixels high, so that small scans stay legible."""
    pixels = to_slices(np.asarray(image.array, dtype=np.float32), slice_axis)
    stacks = [to_slices(np.asarray(array), slice_axis) for array in labels]
    area = (stacks[0] > 0).reshape(stacks[0].shape[0], -1).sum(axis=1)
    occupied = np.flatnonzero(area) if area.any() else np.arange(pixels.shape[0])
    picks = [int(occupied[round(q * (len(occupied) - 1))]) for q in np.linspace(0.2, 0.8, count)]
    low, high = np.percentile(pixels, (0.5, 99.5))
    scaled = np.clip((pixels - low) / max(float(high - low), 1e-6), 0, 1)
    rows = [
        np.concatenate([overlay(scaled[index][..., None], stack[index].astype(np.uint8)) for index in picks], axis=1)
        for stack in stacks
    ]
    montage = np.concatenate(rows, axis=0)
    zoom = max(1, -(-min_height // montage.shape[0]))
    return montage.repeat(zoom, axis=0).repeat(zoom, axis=1) if zoom > 1 else montage


class VolumePredictionFolder(PredictionFolder):
    """:class:`~convunext.inference.prediction_folder.PredictionFolder` for volumes: ``NAME_mask.nii.gz`` (uint8
    class ids on the input's geometry), optionally ``NAME_prob.nii.gz`` (``I x J x K x classes`` float32) and
    ``NAME_overlay.png`` (three slices with the mask overlaid); the folder's rules are the same."""

    suffixes = VOLUME_OUTPUT_SUFFIXES

    def name_of(self, path: Path) -> str:
        return volume_name(path)

    def output_paths(self, path: Path) -> list[Path]:
        wanted = (True, self.probabilities, self.overlay)
        name = self.name_of(path)
        return [self.out_dir / f"{name}{suffix}" for suffix, want in zip(self.suffixes, wanted, strict=True) if want]

    def save_volume(self, path: Path, volume: Volume, prediction: VolumePrediction, slice_axis: int) -> list[Path]:
        """Write the outputs of input ``path`` (as one set: all or none) and list it in ``predictions.csv``."""
        paths = self.output_paths(path)
        contents = [nifti_bytes(prediction.labels.array, prediction.labels, np.uint8)]
        if self.probabilities:
            stacked = np.moveaxis(prediction.probabilities, 0, -1).astype(np.float32)
            contents.append(nifti_bytes(stacked, prediction.labels, np.float32))
        if self.overlay:
            contents.append(png_bytes(slice_montage(volume, [prediction.labels.array], slice_axis)))
        atomic_write_files(list(zip(paths, contents, strict=True)))
        name = self.name_of(path)
        self.rows[name] = {"name": name, "image": str(path), "threshold": prediction.threshold}
        self._unwritten += 1
        return paths
