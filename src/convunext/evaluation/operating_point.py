"""Recording a trained checkpoint's operating point after the fact: the training scale and the validation threshold
that runs trained since record themselves (``convunext calibrate``).

A run records the field-of-view diameter of its training images (``meta["scale"]``, matched by
:mod:`~convunext.inference.scale`) and the Dice-optimal threshold on its validation split (``meta["threshold"]``,
:mod:`~convunext.inference.threshold`) as it trains. :func:`calibrate_checkpoint` measures both for a checkpoint
made before they were recorded (or again, on another copy of the data) with the same code the trainer uses, and
writes them into the checkpoint's JSON; the weights are not touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint
from ..data import open_dataset
from ..data.fov import dataset_fov_diameter
from ..errors import ConvUNeXtError
from ..inference.sliding_window import Inferer
from ..utils.io import atomic_write_json
from .evaluate import evaluate_checkpoint
from .threshold import ThresholdSearch

__all__ = ["calibrate_checkpoint"]


def calibrate_checkpoint(
    checkpoint: Checkpoint,
    root: str | Path | None = None,
    data_options: Mapping[str, Any] | None = None,
    inferer: Inferer | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure a checkpoint's training scale and validation threshold on the data it was trained on, write them
    into its JSON (``meta["scale"]``, ``meta["threshold"]``), and return the entries written.

    Args:
        checkpoint: the checkpoint; its ``meta["data"]`` names the dataset and its options.
        root: the dataset's folder (default: the default data root's copy; ignored for generated data).
        data_options: reader options on top of the checkpoint's (e.g. HRF's ``skip_unannotated``).
        inferer: how the model runs over the validation images (default: the checkpoint's own tile size).
        progress: show a progress bar over the validation images.

    Raises:
        ConvUNeXtError: a checkpoint without a known dataset, a dataset that cannot be opened, or a model of more
            than two classes (no threshold to choose).
    """
    trained_on = checkpoint.meta.get("data", {})
    name = trained_on.get("name")
    if not name or name == "folder" and root is None:
        raise ConvUNeXtError(
            f"{checkpoint.path}: its description names no dataset it can be calibrated on"
            if not name
            else f"{checkpoint.path}: trained on a folder dataset; give the folder (--data-root)"
        )
    if len(checkpoint.class_names) != 2:
        raise ConvUNeXtError(
            f"{checkpoint.path}: a threshold applies to binary models; this one has {len(checkpoint.class_names)} "
            "classes"
        )
    options = {**trained_on.get("options", {}), **(data_options or {})}
    train = open_dataset(name, root, "train", **options)
    val = open_dataset(name, root, "val", **options)
    search = ThresholdSearch()
    evaluate_checkpoint(
        checkpoint,
        val,
        inferer,
        threshold="argmax",
        scale="off",  # the validation images are at the training scale: run them as the trainer does
        progress=progress,
        topology="off",
        on_image=lambda sample, probs: search.update(probs[0, 1], sample["mask"], sample["fov"]),
    )
    entries: dict[str, Any] = {"threshold": search.best().record("val")}
    diameter = dataset_fov_diameter(train)
    if diameter is not None:
        entries["scale"] = {"fov_diameter": diameter}
    meta = {key: value for key, value in checkpoint.meta.items() if key not in entries}
    after = {key: meta.pop(key) for key in ("weights", "pretrained") if key in meta}  # the description's last parts
    atomic_write_json(checkpoint.path, {**meta, **entries, **after})
    return entries
