"""Segment new images with a trained checkpoint: the Python API behind ``convunext predict``.

>>> predictor = Predictor.from_checkpoint("runs/my-run")           # doctest: +SKIP
>>> result = predictor.predict(image)   # H x W x C array in [0, 1] or uint8, or a C x H x W tensor
>>> result.mask.shape, result.probabilities.shape                  # (H, W), (K, H, W)

The predictor runs its model by an :class:`~convunext.inference.sliding_window.Inferer`: large images go through
sliding windows (Gaussian blending) in bounded memory; images with a side under the model's minimum (16 px; 64 px
for an ONNX-exported ConvUNeXt) are padded for the forward pass and cropped back, so every image gets a result of
its own size. :mod:`convunext.inference.prediction_folder` writes the results as ``convunext predict`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..checkpoint import Checkpoint, load_checkpoint
from ..data.io import read_image
from ..errors import ConvUNeXtError
from ..pretrained import resolve_checkpoint
from .scale import ScaleMatch, ScalePolicy, ScaleSetting, find_fov
from .sliding_window import Inferer
from .threshold import ThresholdSetting, predicted_labels, resolve_threshold

__all__ = ["FOV_SETTINGS", "PREDICT_TILE_SIZE", "FovSetting", "Prediction", "Predictor", "check_fov_setting", "overlay"]

# Overlay colours for classes 1..K-1 (class 0, background, is not tinted); green first: it stands out on both
# fundus (red/orange) and H&E (pink/purple) images.
PALETTE = np.array(
    [[0, 255, 96], [64, 200, 255], [255, 220, 0], [255, 64, 64], [255, 120, 255], [255, 160, 60]], dtype=np.float32
)
PREDICT_TILE_SIZE = 512
"""The tile side a :class:`Predictor` (and ``convunext predict``) uses unless told otherwise: any image runs in
bounded memory."""


@dataclass
class Prediction:
    """One image's result: ``probabilities`` ``K x H x W`` float32 (softmax), ``mask`` ``H x W`` uint8 class ids
    (the argmax, or foreground where its probability is above ``threshold``), how the image was resized for the
    model (``scale``; None when the predictor matches no scale) and what became of the pixels outside its field of
    view (``outside_fov``: ``"background"``, ``"kept: no field of view found"``, or None when not asked)."""

    probabilities: np.ndarray
    mask: np.ndarray
    scale: ScaleMatch | None = None
    threshold: float | None = None
    outside_fov: str | None = None


class Predictor:
    """A model plus its normalisation and the :class:`~convunext.inference.sliding_window.Inferer` that runs it.

    Args:
        model: a registry model; :meth:`Inferer.prepare <convunext.inference.sliding_window.Inferer.prepare>` moves
            it to the inferer's device and, for every back-end but ``eager``, makes the copy that runs (once, here:
            later changes to ``model`` are not seen).
        mean: per-channel normalisation mean the model was trained with.
        std: per-channel normalisation standard deviation the model was trained with.
        inferer: how the model runs (default: tiles of :data:`PREDICT_TILE_SIZE`, the fast back-end on the best
            device, as ``convunext predict``); a ``tile_size`` of ``None`` runs images whole.
        class_names: names of the output classes (background first).
        threshold: a binary model's foreground threshold (None: the argmax;
            :mod:`~convunext.evaluation.threshold`).
        scale: how each image is resized for the model (:mod:`~convunext.inference.scale`; None: as it is).
        background_outside_fov: make every pixel outside the image's field of view (derived from the image,
            :func:`~convunext.inference.scale.find_fov`) background, probabilities included — for a model trained
            within fields of view, which learned nothing about the dark frame around them (its output there is
            noise: specks and arcs along the rim). An image without a field of view to trust is left whole.

    Attributes:
        model: the module that runs (the fast, compiled or ONNX Runtime form of ``model``, or ``model`` itself).
        inferer: the inferer it runs by.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        inferer: Inferer | None = None,
        class_names: Sequence[str] | None = None,
        threshold: float | None = None,
        scale: ScalePolicy | None = None,
        background_outside_fov: bool = False,
    ) -> None:
        self.inferer = inferer or Inferer(tile_size=PREDICT_TILE_SIZE)
        self.threshold, self.scale = threshold, scale
        self.background_outside_fov = background_outside_fov
        self.model = self.inferer.prepare(model)
        self.in_channels = len(mean)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.class_names = list(class_names) if class_names else None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | Checkpoint,
        inferer: Inferer | None = None,
        threshold: ThresholdSetting = "auto",
        scale: ScaleSetting = "auto",
        fov: FovSetting = "auto",
    ) -> Predictor:
        """A predictor of a checkpoint alone (anything :func:`open_checkpoint` opens: a run folder, ``.json`` or
        ``.safetensors``, or a shipped model's name): its model, normalisation and classes, run by ``inferer``
        (default as :class:`Predictor`'s; a ``tile_size`` of ``None`` means the checkpoint's own,
        :meth:`~convunext.inference.sliding_window.Inferer.for_checkpoint`), at ``threshold`` (``auto``: the one
        chosen on validation, stored with the checkpoint), ``scale`` (``auto``: each image resized to the
        checkpoint's training scale, :mod:`~convunext.inference.scale`) and ``fov`` (``auto``: background outside
        each image's field of view when the checkpoint was trained within fields of view; ``off``: the model's
        output everywhere).

        Raises:
            ConvUNeXtError: a checkpoint that does not load (named), or a threshold, scale or fov setting that is
                not valid (a threshold for a multi-class model).
        """
        checkpoint = open_checkpoint(path)
        inferer = (inferer or Inferer(tile_size=PREDICT_TILE_SIZE)).for_checkpoint(checkpoint.meta)
        return cls(
            checkpoint.model,
            checkpoint.mean,
            checkpoint.std,
            inferer,
            checkpoint.class_names,
            threshold=resolve_threshold(threshold, checkpoint.meta),
            scale=ScalePolicy.for_checkpoint(scale, checkpoint.meta),
            background_outside_fov=check_fov_setting(fov) == "auto"
            and bool(checkpoint.meta.get("data", {}).get("has_fov")),
        )

    def _to_tensor(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(image, np.ndarray):
            if image.ndim == 2:
                image = image[..., None]
            if image.ndim != 3:
                raise ConvUNeXtError(f"expected an H x W x C image array, got shape {image.shape}")
            scale = 255.0 if image.dtype == np.uint8 else 1.0
            image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32) / scale).permute(2, 0, 1)
        if image.ndim != 3:
            raise ConvUNeXtError(f"expected a C x H x W image tensor, got shape {tuple(image.shape)}")
        if image.shape[0] != self.in_channels:
            raise ConvUNeXtError(f"image has {image.shape[0]} channels, the model expects {self.in_channels}")
        return (image.float() - self.mean) / self.std

    def predict(self, image: np.ndarray | torch.Tensor) -> Prediction:
        """Segment one image: ``H x W x C`` array (uint8, or float in [0, 1]) or ``C x H x W`` float tensor.

        Raises:
            ConvUNeXtError: the model's output is not finite (NaN or Inf) for this image.
        """
        return self._segment(image, "image")

    def predict_file(self, path: str | Path) -> tuple[np.ndarray, Prediction]:
        """Read an image file (forced to the model's channel count) and segment it; returns (image, prediction).

        Raises:
            ConvUNeXtError: unreadable file, or a model output that is not finite for it, naming the file.
        """
        image = read_image(Path(path), channels=self.in_channels)
        return image, self._segment(image, str(path))

    @torch.inference_mode()
    def _segment(self, image: np.ndarray | torch.Tensor, source: str) -> Prediction:
        """:meth:`predict`, naming ``source`` when the output is not finite: its argmax would be a plausible
        all-background mask, and its probabilities NaN."""
        tensor = self._to_tensor(image)
        pixels = None
        if self.background_outside_fov or (self.scale is not None and self.scale.measures_images):  # its FOV
            pixels = (tensor * self.std + self.mean).permute(1, 2, 0).numpy()
        fov = find_fov(pixels) if self.background_outside_fov else None  # type: ignore[arg-type]
        match = None if self.scale is None else self.scale.match(image=pixels, fov=fov)
        probabilities = self.inferer(self.model, tensor, scale=1.0 if match is None else match.factor)
        if not torch.isfinite(probabilities).all():
            raise ConvUNeXtError(
                f"{source}: the model's output holds NaN or Inf (an input holding them, or weights that overflow "
                "on it); nothing was written for it"
            )
        outside_fov = None
        if self.background_outside_fov:
            outside_fov = "kept: no field of view found" if fov is None else "background"
            if fov is not None:
                outside = torch.from_numpy(~fov)
                probabilities[:, outside] = 0.0
                probabilities[0, outside] = 1.0
        mask = predicted_labels(probabilities, self.threshold)
        return Prediction(probabilities.numpy(), mask.to(torch.uint8).numpy(), match, self.threshold, outside_fov)


FovSetting = Literal["auto", "off"]
"""What :meth:`Predictor.from_checkpoint` does outside each image's field of view: ``auto``: background for a model
trained within fields of view; ``off``: keep the model's output."""
FOV_SETTINGS = ("auto", "off")


def open_checkpoint(path: str | Path | Checkpoint) -> Checkpoint:
    """``path`` as a loaded checkpoint: a run folder, a ``.json`` or ``.safetensors``, a pretrained folder or the
    name of a shipped model (``drive-vessels``), resolved as the CLI resolves its checkpoint argument."""
    return path if isinstance(path, Checkpoint) else load_checkpoint(resolve_checkpoint(str(path)))


def check_fov_setting(setting: str) -> FovSetting:
    """``setting`` if it is one of :data:`FOV_SETTINGS`.

    Raises:
        ConvUNeXtError: any other value, naming the valid ones.
    """
    if setting not in FOV_SETTINGS:
        raise ConvUNeXtError(f"fov={setting!r} is not valid; choose one of {', '.join(FOV_SETTINGS)}")
    return setting  # type: ignore[return-value]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image (``H x W x C`` float in [0, 1]) with each foreground class tinted and its contour drawn;
    returns ``H x W x 3`` uint8."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
    out = rgb.astype(np.float32) * 255.0
    for class_id in range(1, int(mask.max(initial=0)) + 1):
        region = mask == class_id
        if not region.any():
            continue
        colour = PALETTE[(class_id - 1) % len(PALETTE)]
        out[region] = (1 - alpha) * out[region] + alpha * colour
        out[_boundary(region)] = colour
    return np.clip(out, 0, 255).astype(np.uint8)


def _boundary(region: np.ndarray) -> np.ndarray:
    """Pixels of ``region`` with a 4-neighbour outside it."""
    padded = np.pad(region, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~interior
