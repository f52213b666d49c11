"""Publishing a run as a pretrained model (``convunext export RUN --pretrained NAME``): its card states test metrics
taken from evaluations of the same weights on the data sets they were trained on (each source of a ``mixed`` run),
never typed by hand."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint, load_checkpoint
from ..errors import ConvUNeXtError
from .card import CardTest, PretrainedCard, dataset_terms
from .store import check_destination, check_name, save_pretrained

__all__ = ["CARD_METRICS", "publish_pretrained", "trained_datasets"]

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


def trained_datasets(meta: dict[str, Any]) -> tuple[str, ...]:
    """The data sets a checkpoint was trained on (its ``data.name``; each source of a ``mixed`` one), empty when
    it does not record them."""
    from ..data.mixed import DEFAULT_DATASETS

    data = meta.get("data", {})
    name = data.get("name")
    if name == "mixed":
        return tuple(data.get("options", {}).get("datasets", DEFAULT_DATASETS))
    return (name,) if name else ()


def _evaluated_on(report: dict[str, Any], report_path: Path) -> str:
    """The data set a test report is an evaluation on, or a one-line error naming it."""
    evaluated_on = report.get("dataset")
    if not isinstance(evaluated_on, str) or not evaluated_on:
        raise ConvUNeXtError(
            f"{report_path}: names no dataset, so the card could not say what its metrics were measured on; "
            "give the metrics.json of a `convunext evaluate` run"
        )
    return evaluated_on


def _card_test(checkpoint: Checkpoint, report_path: Path) -> CardTest:
    """The card's entry of one test report, which must be of the checkpoint's weights and its test split."""
    report = _read_test_report(report_path)
    if report.get("weights_sha256") != checkpoint.meta["weights"]["sha256"]:
        raise ConvUNeXtError(f"{report_path}: this report is not of {checkpoint.path} (other weights, or none named)")
    if report.get("split") != "test":
        raise ConvUNeXtError(
            f"{report_path}: the card states test metrics, this report is of the {report.get('split')!r} split"
        )
    metrics = report["metrics"]
    return CardTest(
        dataset=_evaluated_on(report, report_path),
        metrics={key: metrics[key] for key in CARD_METRICS if metrics.get(key) is not None},
        evaluation={
            key: report.get(key) for key in ("dataset", "split", "images", "tile_size", "threshold", "scale_setting")
        },
        reference_image=_reference_image(report_path.parent / "per_image.csv"),
    )


def _check_coverage(
    checkpoint: Checkpoint, trained_on: Sequence[str], tests: Sequence[CardTest], reports: Sequence[Path]
) -> None:
    """The card states test metrics on each data set the checkpoint was trained on, once, and on no other."""
    for test, path in zip(tests, reports):
        if test.dataset not in trained_on:
            raise ConvUNeXtError(
                f"{path}: an evaluation on {test.dataset!r}, but {checkpoint.path} was trained on "
                f"{' + '.join(trained_on)}; the card states test metrics on its training data: evaluate it on "
                f"{' and '.join(repr(name) for name in trained_on)}"
            )
    tested = [test.dataset for test in tests]
    twice = sorted({name for name in tested if tested.count(name) > 1})
    if twice:
        raise ConvUNeXtError(f"two test reports on {twice[0]!r}; give one per data set")
    missing = [name for name in trained_on if name not in tested]
    if missing:
        raise ConvUNeXtError(
            f"{checkpoint.path} was trained on {' + '.join(trained_on)}, but no test report on "
            f"{', '.join(missing)} was given; evaluate it there (`convunext evaluate`) and give every report"
        )


def publish_pretrained(
    checkpoint_path: str | Path,
    name: str,
    test_reports: str | Path | Sequence[str | Path],
    task: str,
    selection: str,
    folder: str | Path,
) -> Path:
    """Write a run's checkpoint as the pretrained model folder ``folder`` with a card built from its test report
    (:func:`~convunext.pretrained.store.save_pretrained`: float16 weights, the JSON with the card, ``README.md``).

    Args:
        checkpoint_path: the run's checkpoint (run folder, ``.json`` or ``.safetensors``).
        name: the model's name (``drive-vessels``); letters, digits and ``-``.
        test_reports: the ``metrics.json`` of the checkpoint's test evaluations (``convunext evaluate``, or a
            reproduce run's ``test/metrics.json``): their weights must be the checkpoint's, and there must be one
            on each data set it was trained on (each source of a ``mixed`` run), which the card names.
        task: one line on what the model segments.
        selection: one line on how the run was chosen (on validation).
        folder: where to write it: a new or empty folder, or that of an earlier version of the model (replaced,
            all files or none); never the package's own.

    Returns:
        The JSON path written.

    Raises:
        ConvUNeXtError: a bad name or folder, or a report that is unreadable or not of these weights or split, a
            data set it was not trained on or given twice, or a data set it was trained on without a report.
    """
    check_name(name)
    check_destination(folder, name)
    checkpoint = load_checkpoint(checkpoint_path)
    reports = [Path(test_reports)] if isinstance(test_reports, (str, Path)) else [Path(path) for path in test_reports]
    if not reports:
        raise ConvUNeXtError(f"{checkpoint.path}: give the test report of each data set it was trained on")
    tests = [_card_test(checkpoint, path) for path in reports]
    # a checkpoint that does not record its training data takes the reports'
    order = trained_datasets(checkpoint.meta) or tuple(dict.fromkeys(test.dataset for test in tests))
    _check_coverage(checkpoint, order, tests, reports)
    tests.sort(key=lambda test: order.index(test.dataset))
    evaluated = ", ".join(
        f"{test.dataset} ({(test.evaluation or {}).get('images')} test images evaluated)" for test in tests
    )
    card = PretrainedCard(
        name=name,
        model=checkpoint.meta["model"]["name"],
        task=task,
        data=evaluated if len(tests) == 1 else f"{' + '.join(order)} together; tested on {evaluated}",
        selection=selection,
        tests=tuple(tests),
        terms=dataset_terms([test.dataset for test in tests]),
    )
    return save_pretrained(checkpoint, folder, card)
