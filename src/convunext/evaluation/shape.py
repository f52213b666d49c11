"""Shape metrics of 2D evaluations, beside the paper's overlap metrics: ``convunext evaluate --surface`` and the GlaS
challenge's object-level metrics.

:class:`ShapeMetrics` is an ``on_image`` callback of :func:`~convunext.evaluation.evaluate.evaluate_model`. Per image
it computes

* with ``surface``: HD95, ASSD and NSD (:mod:`~convunext.evaluation.surface`, MONAI's conventions) of each
  foreground class, averaged over the classes, in pixels — or in mm when the pixel size is given — inside the field
  of view (pixels outside it, and ignored ones, belong to neither mask);
* for a dataset of instance masks (GlaS: each gland its own id): the object-level F1, object Dice and object
  Hausdorff of :mod:`~convunext.evaluation.objects`, the predicted objects being the 8-connected components of the
  predicted foreground.

:meth:`ShapeMetrics.summary` averages them over the images (distances over the images where they are finite:
``*_infinite`` counts the others, where a class is in only one of prediction and truth).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from torch import Tensor

from ..data.io import IGNORE_INDEX
from ..inference.threshold import predicted_labels
from .objects import label_objects, object_metrics
from .surface import surface_metrics

__all__ = ["SURFACE_METRICS", "ShapeMetrics"]

SURFACE_METRICS = ("hd95", "assd", "nsd")
OBJECT_METRICS = ("object_f1", "object_dice", "object_hausdorff")
REPORTED_SHAPE_METRICS: tuple[tuple[str, str], ...] = (
    ("hd95", "HD95 (per image, mean of finite)"),
    ("assd", "ASSD (per image, mean of finite)"),
    ("nsd", "NSD (per image, mean)"),
    ("object_f1", "object F1 (GlaS, per image, mean)"),
    ("object_dice", "object Dice (GlaS, per image, mean)"),
    ("object_hausdorff", "object Hausdorff (GlaS, per image, mean of finite)"),
)


class ShapeMetrics:
    """Per-image surface distances and object-level metrics (see the module docstring).

    Args:
        num_classes: ``K``.
        threshold: a binary model's foreground threshold (None: the argmax), as the evaluation's.
        surface: compute HD95 / ASSD / NSD.
        pixel_size: the pixel's side in mm (distances then in mm); None: distances in pixels.
        tolerance: the NSD tolerance, in the distances' unit.
        instances: for a dataset of instance masks, ``instances(name)`` returns image ``name``'s ``H x W`` instance
            ids (0 = background); None: no object metrics.

    Attributes:
        rows: ``{image name: {metric: value}}``.
        unit: ``"mm"`` or ``"px"``.
    """

    def __init__(
        self,
        num_classes: int,
        threshold: float | None = None,
        *,
        surface: bool = True,
        pixel_size: float | None = None,
        tolerance: float = 1.0,
        instances: Callable[[str], np.ndarray] | None = None,
    ) -> None:
        if pixel_size is not None and not pixel_size > 0:
            raise ValueError(f"pixel_size must be positive, got {pixel_size!r}")
        self.num_classes, self.threshold = num_classes, threshold
        self.surface, self.instances = surface, instances
        self.spacing = None if pixel_size is None else (float(pixel_size), float(pixel_size))
        self.tolerance = float(tolerance)
        self.unit = "px" if pixel_size is None else "mm"
        self.rows: dict[str, dict[str, float]] = {}

    @property
    def active(self) -> bool:
        """Whether it computes anything (surface distances, or object metrics)."""
        return self.surface or self.instances is not None

    def __call__(self, sample: Mapping[str, Any], probabilities: Tensor) -> None:
        """Add one image: ``sample`` as the dataset gives it (``mask`` H x W, ``fov`` H x W bool, ``name``) and the
        model's ``1 x K x H x W`` probabilities."""
        prediction = predicted_labels(probabilities[0], self.threshold).cpu().numpy()
        target = sample["mask"].numpy().copy()
        fov = sample.get("fov")
        if fov is not None:
            target[~fov.numpy()] = IGNORE_INDEX
        row: dict[str, float] = {}
        if self.surface:
            scores = surface_metrics(prediction, target, self.num_classes, self.spacing, tolerance=self.tolerance)
            for key in SURFACE_METRICS:
                row[key] = float(np.mean([getattr(score, key) for score in scores.values()]))
        if self.instances is not None:
            valid = target != IGNORE_INDEX
            found = object_metrics(
                label_objects((prediction > 0) & valid), self.instances(sample["name"]), self.spacing
            )
            row.update(object_f1=found.f1, object_dice=found.object_dice, object_hausdorff=found.object_hausdorff)
        self.rows[sample["name"]] = row

    def summary(self) -> dict[str, float]:
        """Means over the images: ``hd95`` / ``assd`` / ``object_hausdorff`` over the finite values (with
        ``hd95_infinite``... counting the others), ``nsd``, ``object_f1``, ``object_dice`` over all."""
        result: dict[str, float] = {}
        keys = [key for key in (*SURFACE_METRICS, *OBJECT_METRICS) if any(key in row for row in self.rows.values())]
        for key in keys:
            values = [row[key] for row in self.rows.values() if key in row]
            finite = [value for value in values if math.isfinite(value)]
            result[key] = math.fsum(finite) / len(finite) if finite else math.nan
            if key in ("hd95", "assd", "object_hausdorff"):
                result[f"{key}_infinite"] = len(values) - len(finite)
        return result
