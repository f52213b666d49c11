"""Second-observer scores: how well a second human annotator agrees with the ground truth (the first annotator),
measured exactly as the models are (:class:`~convunext.evaluation.metrics.SegmentationMetrics`, inside the field of
view). They are the usual human reference of retinal vessel papers: a model scoring near them is as close to the
ground truth as another expert.

The datasets that have one say so in their :class:`~convunext.data.DatasetSpec` (``second_observer``: DRIVE's
``2nd_manual``, STARE's ``labels-vk``, CHASE_DB1's ``_2ndHO``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from ..data import FileDataset, dataset_spec, open_dataset
from ..data.io import IGNORE_INDEX
from ..errors import ConvUNeXtError
from .metrics import SegmentationMetrics

__all__ = ["OBSERVER_METRICS", "SECOND_OBSERVER_NOTE", "second_observer_metrics"]

SECOND_OBSERVER_NOTE = (
    "**Second observer**: a second expert's vessel masks of the same test images, scored against the ground truth "
    "(the first expert's) exactly as the models are, inside the field of view: the agreement between two humans, a "
    "reference for the models' scores. Its masks are binary, so it has no AUC."
)
"""The sentence a report prints under a table with a second-observer row."""

OBSERVER_METRICS = (
    "dice_fg_mean",
    "miou_cm",
    "iou_fg_cm",
    "pixel_accuracy",
    "fov_sensitivity",
    "fov_specificity",
    "fov_accuracy",
    "cldice_mean",
)
"""The keys of :func:`second_observer_metrics`, named as :meth:`SegmentationMetrics.compute
<convunext.evaluation.metrics.SegmentationMetrics.compute>` names them. A binary mask has no AUC."""


def second_observer_metrics(
    dataset: str,
    root: str | Path | None,
    split: str = "test",
    names: Sequence[str] | None = None,
    **options: Any,
) -> dict[str, float] | None:
    """The second observer's masks scored as a prediction against the first observer's (the ground truth).

    As for a model (:func:`~convunext.evaluation.evaluate.evaluate_model`): pixels outside the field of view are
    ignored by Dice, mIoU and pixel accuracy, the ``fov_*`` rates and clDice are computed inside it.

    Args:
        dataset: a registered dataset name.
        root: its folder, as for :func:`~convunext.data.open_dataset`.
        split: the split whose images are scored.
        names: only these images of the split (those a report covers), in any order; None: the whole split.
        **options: the reader's other options (STARE's ``fold``, ...), the same for both observers.

    Returns:
        The :data:`OBSERVER_METRICS` (floats), or None for a dataset without a second observer.

    Raises:
        ConvUNeXtError: a missing or bad file of either observer, or a name not in the split.
    """
    spec = dataset_spec(dataset)
    if spec.second_observer is None:
        return None
    first_options = {key: value for key, value in options.items() if key not in spec.second_observer}
    first = cast(FileDataset, open_dataset(spec.name, root, split, **first_options))
    second = cast(FileDataset, open_dataset(spec.name, root, split, **{**first_options, **spec.second_observer}))
    positions = {name: index for index, name in enumerate(first.names)}
    wanted = list(positions) if names is None else list(names)
    unknown = [name for name in wanted if name not in positions]
    if unknown:
        raise ConvUNeXtError(f"{spec.title} {split} split: no image named {unknown[0]!r}")
    metrics = SegmentationMetrics(num_classes=first.info.num_classes, ignore_index=IGNORE_INDEX, topology=True)
    for name in wanted:
        truth, other = first[positions[name]], second[positions[name]]
        fov = truth["fov"]
        target = truth["mask"].masked_fill(~fov, IGNORE_INDEX)
        metrics.update(other["mask"][None], target[None], fov[None], [name])
    results = metrics.compute()
    return {key: float(results[key]) for key in OBSERVER_METRICS}
