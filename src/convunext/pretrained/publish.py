"""Publishing a run as a pretrained model (``convunext export RUN --pretrained NAME``): its card states test metrics
taken from an evaluation of the same weights on the data set they were trained on, never typed by hand."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint, load_checkpoint
from ..errors import ConvUNeXtError
from .card import DATASET_TERMS, PretrainedCard
from .store import check_destination, check_name, save_pretrained

__all__ = ["CARD_METRICS", "publish_pretrained"]

CARD_METRICS = (
    "dice_fg_mean",
    "miou_cm",
    "fov_sensitivity",
    "fov_specificity",
    "fov_accuracy",
    "fov_auc",
    "cldice_mean",
)
"""The test metrics a card states (those the evaluation computed)."""


def _reference_image(per_image_csv: Path) -> dict[str, Any] | None:
    """The first test image's name and Dice (``per_image.csv`` beside the test report), for a quick check of the
    published weights on one image; None without the file."""
    if not per_image_csv.is_file():
        return None
    with open(per_image_csv, newline="") as handle:
        first = next(csv.DictReader(handle), None)
    return None if first is None else {"name": first["name"], "dice_fg": float(first["dice_fg"])}


def _read_test_report(path: Path) -> dict[str, Any]:
    """An evaluation report's ``metrics.json`` (its context and ``metrics``), or a one-line error naming it."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConvUNeXtError(f"{path}: cannot read the test report ({error})") from error
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
        raise ConvUNeXtError(f"{path}: not an evaluation report (no 'metrics'); give the metrics.json of one")
    return report


def _card_dataset(checkpoint: Checkpoint, report: dict[str, Any], report_path: Path) -> str:
    """The data set the card names: the one the checkpoint was trained on, which the report must be an evaluation
    on (a checkpoint that does not record its training data takes the report's)."""
    evaluated_on = report.get("dataset")
    if not isinstance(evaluated_on, str) or not evaluated_on:
        raise ConvUNeXtError(
            f"{report_path}: names no dataset, so the card could not say what its metrics were measured on; "
            "give the metrics.json of a `convunext evaluate` run"
        )
    trained_on = checkpoint.meta.get("data", {}).get("name")
    if trained_on and evaluated_on != trained_on:
        raise ConvUNeXtError(
            f"{report_path}: an evaluation on {evaluated_on!r}, but {checkpoint.path} was trained on "
            f"{trained_on!r}; the card states test metrics on its training data: evaluate it on {trained_on!r}"
        )
    return trained_on or evaluated_on


def publish_pretrained(
    checkpoint_path: str | Path,
    name: str,
    test_report: str | Path,
    task: str,
    selection: str,
    folder: str | Path,
) -> Path:
    """Write a run's checkpoint as the pretrained model folder ``folder`` with a card built from its test report
    (:func:`~convunext.pretrained.store.save_pretrained`: float16 weights, the JSON with the card, ``README.md``).

    Args:
        checkpoint_path: the run's checkpoint (run folder, ``.json`` or ``.safetensors``).
        name: the model's name (``drive-vessels``); letters, digits and ``-``.
        test_report: the ``metrics.json`` of that checkpoint's test evaluation (``convunext evaluate``, or a
            reproduce run's ``test/metrics.json``); its weights must be the checkpoint's and its dataset the one
            the checkpoint was trained on, which the card names.
        task: one line on what the model segments.
        selection: one line on how the run was chosen (on validation).
        folder: where to write it: a new or empty folder, or that of an earlier version of the model (replaced,
            all files or none); never the package's own.

    Returns:
        The JSON path written.

    Raises:
        ConvUNeXtError: a bad name or folder, or a report that is unreadable or not of these weights, split or data
            set.
    """
    check_name(name)
    check_destination(folder, name)
    checkpoint = load_checkpoint(checkpoint_path)
    report_path = Path(test_report)
    report = _read_test_report(report_path)
    if report.get("weights_sha256") != checkpoint.meta["weights"]["sha256"]:
        raise ConvUNeXtError(f"{report_path}: this report is not of {checkpoint.path} (other weights, or none named)")
    if report.get("split") != "test":
        raise ConvUNeXtError(
            f"{report_path}: the card states test metrics, this report is of the {report.get('split')!r} split"
        )
    dataset = _card_dataset(checkpoint, report, report_path)
    metrics = report["metrics"]
    card = PretrainedCard(
        name=name,
        model=checkpoint.meta["model"]["name"],
        task=task,
        data=f"{dataset} ({report.get('images')} test images evaluated)",
        selection=selection,
        test_metrics={key: metrics[key] for key in CARD_METRICS if metrics.get(key) is not None},
        terms=DATASET_TERMS.get(dataset, "see the terms of use of the data set it was trained on"),
        test_evaluation={
            key: report.get(key) for key in ("dataset", "split", "images", "tile_size", "threshold", "scale_setting")
        },
        reference_image=_reference_image(report_path.parent / "per_image.csv"),
    )
    return save_pretrained(checkpoint, folder, card)
