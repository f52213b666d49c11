"""Scores of a model trained on slices, per volume: ``convunext evaluate`` of a volume checkpoint.

Each volume of the split is segmented whole (:class:`~convunext.inference.volume.VolumePredictor`) and scored per
foreground class against its label volume:

* **Dice** over the whole volume, ``2|P∩T| / (|P| + |T|)`` (1.0 when the class is absent from both);
* **HD95** and **ASSD** in millimetres from the voxel spacing, anisotropic spacing included, and **NSD** at a
  tolerance in mm (:mod:`~convunext.evaluation.surface`: MONAI's conventions). A class absent from exactly one of
  prediction and truth has an infinite HD95/ASSD: the summary averages the finite ones and counts the others.

The report folder holds ``metrics.json`` (the record: context and per-class means), ``per_volume.csv`` (a row per
volume and class), ``metrics.md`` and ``report.html`` (the table, and a few slices of every volume with truth and
prediction overlaid, a legend of the classes).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from ..checkpoint import Checkpoint
from ..data.volumes import Volume, VolumeSliceDataset, layout_info, read_case, read_layout
from ..errors import ConvUNeXtError
from ..inference.predictor import PALETTE
from ..inference.sliding_window import Inferer
from ..inference.threshold import ThresholdSetting
from ..inference.volume import VolumePredictor, slice_montage
from ..pretrained import checkpoint_reference
from ..utils.io import atomic_write_json
from .report_folder import EVALUATION_REPORT, ReportFolder
from .surface import surface_metrics

__all__ = [
    "SliceVolumeDice",
    "VolumeClassScores",
    "VolumeEvaluation",
    "evaluate_volumes",
    "evaluate_volumes_to_report",
    "volume_dice",
    "volume_metrics_table",
]

DEFAULT_NSD_TOLERANCE = 1.0
"""NSD tolerance in mm unless told otherwise (one voxel of a 1 mm MR scan)."""
SLICES_SHOWN = 3


def volume_dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice of two boolean volumes; 1.0 when both are empty."""
    total = int(pred.sum()) + int(target.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, target).sum()) / total


class SliceVolumeDice:
    """The Dice of whole volumes from their slices' predictions, in any order (validation of a model trained on the
    slices of volumes: a per-slice mean counts every empty slice predicted empty as a perfect 1.0).

    Args:
        case_names: the volumes; a slice's name is ``"CASE/S"`` (:class:`~convunext.data.volumes.VolumeSliceDataset`).
        num_classes: ``K``.
        ignore_index: truth value of pixels that count nowhere.

    :meth:`update` counts each slice's per-class overlap; :attr:`counts` is the ``cases x K x 3`` tensor
    (overlap, predicted, true voxels), summable across processes; :meth:`dice` is the mean over volumes of the mean
    over foreground classes of each class's Dice over the whole volume (:func:`volume_dice`: 1.0 for a class absent
    from both).
    """

    def __init__(self, case_names: Sequence[str], num_classes: int, ignore_index: int = 255) -> None:
        self.index = {name: i for i, name in enumerate(case_names)}
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.counts = torch.zeros(len(case_names), num_classes, 3, dtype=torch.float64)

    def update(self, name: str, predicted: Tensor, truth: Tensor) -> None:
        """Count slice ``name``'s ``H x W`` predicted and true class ids."""
        case = self.index[name.rsplit("/", 1)[0]]
        valid = truth != self.ignore_index
        predicted, truth = predicted[valid].long(), truth[valid].long()
        classes = self.num_classes
        self.counts[case, :, 0] += torch.bincount(truth[predicted == truth], minlength=classes)[:classes].double()
        self.counts[case, :, 1] += torch.bincount(predicted, minlength=classes)[:classes].double()
        self.counts[case, :, 2] += torch.bincount(truth, minlength=classes)[:classes].double()

    def dice(self) -> float:
        """The mean over volumes of the mean over foreground classes of each class's whole-volume Dice."""
        overlap, predicted, true = self.counts[:, 1:].unbind(-1)
        total = predicted + true
        per_class = torch.where(total > 0, 2 * overlap / total.clamp_min(1), torch.ones_like(total))
        return float(per_class.mean(dim=1).mean())


@dataclass(frozen=True)
class VolumeClassScores:
    """One volume's scores for one foreground class (distances in mm)."""

    case: str
    class_name: str
    dice: float
    hd95: float
    assd: float
    nsd: float
    true_voxels: int
    predicted_voxels: int


@dataclass
class VolumeEvaluation:
    """Every volume's per-class scores, and their means per class (:meth:`summary`)."""

    class_names: list[str]
    rows: list[VolumeClassScores] = field(default_factory=list)
    spacing: dict[str, list[float]] = field(default_factory=dict)
    confusion: np.ndarray | None = None
    """``K x K`` voxel counts over every volume (rows: truth, columns: prediction)."""

    def add_confusion(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        """Count one volume's voxels into :attr:`confusion`."""
        classes = len(self.class_names)
        counts = np.bincount(
            truth.astype(np.int64).ravel() * classes + predicted.astype(np.int64).ravel(), minlength=classes**2
        )
        counts = counts.reshape(classes, classes)
        self.confusion = counts if self.confusion is None else self.confusion + counts

    def per_volume_rows(self) -> list[dict[str, Any]]:
        """``per_volume.csv``: a row per volume: ``name``, ``dice_fg`` (the mean Dice over foreground classes), then
        per class ``dice_<class>``, ``hd95_<class>``, ``assd_<class>``, ``nsd_<class>`` (mm), ``true_voxels_<class>``,
        ``predicted_voxels_<class>``."""
        means = self.volume_means()
        table: dict[str, dict[str, Any]] = {case: {"name": case, "dice_fg": mean} for case, mean in means.items()}
        for row in self.rows:
            cells = table[row.case]
            for key in ("dice", "hd95", "assd", "nsd", "true_voxels", "predicted_voxels"):
                cells[f"{key}_{row.class_name}"] = getattr(row, key)
        return list(table.values())

    def volume_means(self) -> dict[str, float]:
        """Per volume, the mean over foreground classes of its Dice: ``{case: dice}`` (paired comparisons pair
        these)."""
        cases = dict.fromkeys(row.case for row in self.rows)
        return {case: _mean(row.dice for row in self.rows if row.case == case) for case in cases}

    def flat_metrics(self) -> dict[str, float]:
        """One flat record, in the keys of a 2D evaluation where they mean the same: ``dice_fg_mean`` (per volume
        the mean Dice over foreground classes, then the mean over volumes), ``miou_cm``, ``iou_fg_cm`` and
        ``pixel_accuracy`` (one voxel confusion matrix over all volumes, :attr:`confusion`); then ``hd95_mean``,
        ``assd_mean``, ``nsd_mean`` and per class ``dice_<class>``, ``hd95_<class>``, ``assd_<class>``,
        ``nsd_<class>`` (:meth:`summary`)."""
        summary = self.summary()
        confusion = self.confusion.astype(np.float64) if self.confusion is not None else np.zeros((1, 1))
        true_positives = np.diag(confusion)
        union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positives
        iou = np.where(union > 0, true_positives / np.maximum(union, 1), np.nan)
        flat = {
            "dice_fg_mean": _mean(self.volume_means().values()),
            "miou_cm": _mean(iou),
            "iou_fg_cm": _mean(iou[1:]),
            "pixel_accuracy": float(true_positives.sum() / max(confusion.sum(), 1)),
        }
        flat.update({f"{key}_mean": summary["mean"][key] for key in ("hd95", "assd", "nsd")})
        for name in self.class_names[1:]:
            flat.update({f"{key}_{name}": summary[name][key] for key in ("dice", "hd95", "assd", "nsd")})
        return flat

    def summary(self) -> dict[str, dict[str, float]]:
        """``{class name: {dice, hd95, assd, nsd, volumes, infinite_distances}}`` for each foreground class, then
        ``"mean"`` over the foreground classes (of the class means). HD95/ASSD means are over the finite values;
        ``infinite_distances`` counts the volumes where the class is in only one of prediction and truth."""
        result: dict[str, dict[str, float]] = {}
        for name in self.class_names[1:]:
            rows = [row for row in self.rows if row.class_name == name]
            finite = [row for row in rows if math.isfinite(row.hd95)]
            result[name] = {
                "dice": _mean(row.dice for row in rows),
                "hd95": _mean(row.hd95 for row in finite),
                "assd": _mean(row.assd for row in finite),
                "nsd": _mean(row.nsd for row in rows),
                "volumes": len(rows),
                "infinite_distances": len(rows) - len(finite),
            }
        keys = ("dice", "hd95", "assd", "nsd")
        result["mean"] = {key: _mean(result[name][key] for name in self.class_names[1:]) for key in keys}
        return result


def _mean(values: Any) -> float:
    values = [float(v) for v in values if not math.isnan(float(v))]
    return math.fsum(values) / len(values) if values else math.nan


def evaluate_volumes(
    predictor: VolumePredictor,
    dataset: VolumeSliceDataset,
    tolerance: float = DEFAULT_NSD_TOLERANCE,
    progress: bool = True,
    on_volume: Any = None,
) -> VolumeEvaluation:
    """Segment and score every volume of ``dataset``'s split.

    Args:
        predictor: the checkpoint's volume predictor.
        dataset: the split (its cases; its slices are not used).
        tolerance: NSD tolerance in mm.
        progress: show a progress bar.
        on_volume: called as ``on_volume(case, image, truth, prediction)`` with the first channel's
            :class:`~convunext.data.volumes.Volume`, the true and predicted label arrays (``I x J x K``), e.g. to
            draw slices.
    """
    num_classes = len(predictor.predictor.class_names or dataset.info.class_names)
    names = list(dataset.info.class_names)
    evaluation = VolumeEvaluation(class_names=names)
    for case in tqdm(dataset.cases, desc="evaluate", unit="volume", disable=not progress):
        images, label = read_case(case, num_classes)
        prediction = predictor.predict(images)
        truth, predicted = label.array, prediction.labels.array  # type: ignore[union-attr]
        spacing = images[0].spacing
        evaluation.spacing[case.name] = list(spacing)
        evaluation.add_confusion(predicted, truth)
        surfaces = surface_metrics(predicted, truth, num_classes, spacing=spacing, tolerance=tolerance)
        for class_id in range(1, num_classes):
            evaluation.rows.append(
                VolumeClassScores(
                    case=case.name,
                    class_name=names[class_id],
                    dice=volume_dice(predicted == class_id, truth == class_id),
                    hd95=surfaces[class_id].hd95,
                    assd=surfaces[class_id].assd,
                    nsd=surfaces[class_id].nsd,
                    true_voxels=int((truth == class_id).sum()),
                    predicted_voxels=int((predicted == class_id).sum()),
                )
            )
        if on_volume is not None:
            on_volume(case.name, images[0], truth, predicted)
    return evaluation


def volume_metrics_table(evaluation: VolumeEvaluation) -> str:
    """The per-class means as a Markdown table (Dice, HD95 and ASSD in mm, NSD)."""
    summary = evaluation.summary()
    lines = ["| class | Dice | HD95 (mm) | ASSD (mm) | NSD | volumes | infinite HD |", "|---|---|---|---|---|---|---|"]
    for name, scores in summary.items():
        count = "" if name == "mean" else f"{scores['volumes']:.0f}"
        infinite = "" if name == "mean" else f"{scores['infinite_distances']:.0f}"
        lines.append(
            f"| {name} | {scores['dice']:.4f} | {scores['hd95']:.2f} | {scores['assd']:.2f} | {scores['nsd']:.4f} "
            f"| {count} | {infinite} |"
        )
    return "\n".join(lines)


@dataclass
class VolumeReport:
    """A written volume evaluation: its folder, the record's context and the evaluation."""

    out_dir: Path
    context: dict[str, Any]
    evaluation: VolumeEvaluation
    replaced: bool = False


class _SliceGallery:
    """For each volume, :data:`SLICES_SHOWN` slices through its foreground with truth (top row) and prediction
    (bottom row) overlaid (:func:`~convunext.inference.volume.slice_montage`), as a base64 PNG for the HTML page."""

    def __init__(self, slice_axis: int) -> None:
        self.slice_axis = slice_axis
        self.images: dict[str, str] = {}

    def __call__(self, case: str, image: Volume, truth: np.ndarray, predicted: np.ndarray) -> None:
        picture = Image.fromarray(slice_montage(image, [truth, predicted], self.slice_axis, SLICES_SHOWN))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        self.images[case] = base64.b64encode(buffer.getvalue()).decode("ascii")


def _fmt(value: float, digits: int) -> str:
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def _html_page(evaluation: VolumeEvaluation, context: Mapping[str, Any], gallery: _SliceGallery | None) -> str:
    names = evaluation.class_names
    legend = "".join(
        f'<span class="key" style="background:rgb{tuple(int(c) for c in PALETTE[(i - 1) % len(PALETTE)])}"></span>'
        f"{html.escape(name)} "
        for i, name in enumerate(names)
        if i > 0
    )
    summary_rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{s['dice']:.4f}</td><td>{_fmt(s['hd95'], 2)}</td>"
        f"<td>{_fmt(s['assd'], 2)}</td><td>{s['nsd']:.4f}</td></tr>"
        for name, s in evaluation.summary().items()
    )
    case_rows = []
    cases = list(dict.fromkeys(row.case for row in evaluation.rows))
    for case in cases:
        rows = [row for row in evaluation.rows if row.case == case]
        picture = ""
        if gallery is not None and case in gallery.images:
            picture = (
                f'<td rowspan="{len(rows)}"><img alt="slices of {html.escape(case)}" '
                f'src="data:image/png;base64,{gallery.images[case]}"></td>'
            )
        for index, row in enumerate(rows):
            head = f'<td rowspan="{len(rows)}">{html.escape(case)}</td>' if index == 0 else ""
            case_rows.append(
                f"<tr>{head}<td>{html.escape(row.class_name)}</td><td>{row.dice:.4f}</td><td>{_fmt(row.hd95, 2)}</td>"
                f"<td>{_fmt(row.assd, 2)}</td><td>{row.nsd:.4f}</td><td>{row.true_voxels}</td>"
                f"<td>{row.predicted_voxels}</td>{picture if index == 0 else ''}</tr>"
            )
    title = f"{context['model']} on {context['dataset']} ({context['split']}, {context['volumes']} volumes)"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}
.key{{display:inline-block;width:1em;height:1em;margin:0 .3em 0 1em;vertical-align:middle}}
img{{image-rendering:pixelated}}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Dice over each whole volume; HD95 and ASSD in mm from the voxel spacing; NSD at {context["nsd_tolerance_mm"]} mm.
Distances are infinite where a class is in only one of prediction and truth (left out of the means).</p>
<table><tr><th>class</th><th>Dice</th><th>HD95 (mm)</th><th>ASSD (mm)</th><th>NSD</th></tr>{summary_rows}</table>
<p>Slices: truth (top row) and prediction (bottom row). Classes:{legend}</p>
<table><tr><th>volume</th><th>class</th><th>Dice</th><th>HD95</th><th>ASSD</th><th>NSD</th><th>true voxels</th>
<th>predicted voxels</th><th>slices</th></tr>{"".join(case_rows)}</table>
</body></html>
"""


def _write_report(
    folder: Path, evaluation: VolumeEvaluation, context: dict[str, Any], gallery: _SliceGallery | None
) -> None:
    with open(folder / "per_volume.csv", "w", newline="") as handle:
        rows = evaluation.per_volume_rows()
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (folder / "metrics.md").write_text(volume_metrics_table(evaluation) + "\n", encoding="utf-8")
    if gallery is not None:
        (folder / "report.html").write_text(_html_page(evaluation, context, gallery), encoding="utf-8")
    per_class = {name: _json_values(scores) for name, scores in evaluation.summary().items()}
    record = {**context, "metrics": _json_values(evaluation.flat_metrics()), "per_class": per_class}
    atomic_write_json(folder / EVALUATION_REPORT.record, record)


def _json_values(values: Mapping[str, float]) -> dict[str, float | None]:
    """NaN (no finite value to average) as null: JSON has no NaN."""
    return {key: None if math.isnan(value) else value for key, value in values.items()}


def evaluate_volumes_to_report(
    checkpoint: Checkpoint,
    data: str | Path,
    split: str = "test",
    *,
    out_dir: str | Path,
    inferer: Inferer | None = None,
    threshold: ThresholdSetting = "auto",
    tolerance: float = DEFAULT_NSD_TOLERANCE,
    html_page: bool = True,
    progress: bool = True,
    data_options: Mapping[str, Any] | None = None,
) -> VolumeReport:
    """Evaluate a volume checkpoint on a split of the volume dataset in ``data`` and write the report folder
    (replacing an earlier evaluation there whole, :class:`~convunext.evaluation.report_folder.ReportFolder`).

    The dataset is opened with the checkpoint's own slicing and normalisation, never refitted on the data.

    Raises:
        ConvUNeXtError: a malformed dataset (naming the file), classes that differ from the checkpoint's, or a report
            folder that cannot be written.
    """
    predictor = VolumePredictor.from_checkpoint(checkpoint, inferer, threshold)
    layout = read_layout(data)
    if list(layout.class_names) != list(checkpoint.class_names):
        raise ConvUNeXtError(
            f"{data}: classes {', '.join(layout.class_names)} differ from the checkpoint's "
            f"({', '.join(checkpoint.class_names)})"
        )
    settings = predictor.settings
    dataset = VolumeSliceDataset(layout.root, split, info=layout_info(layout, settings), **dict(data_options or {}))
    with ReportFolder(Path(out_dir), EVALUATION_REPORT) as folder:
        gallery = _SliceGallery(settings.slice_axis) if html_page else None
        start = time.perf_counter()
        evaluation = evaluate_volumes(predictor, dataset, tolerance, progress, on_volume=gallery)
        context = {
            "checkpoint": checkpoint_reference(checkpoint.path),
            "weights_sha256": checkpoint.meta["weights"]["sha256"],
            "model": checkpoint.meta["model"]["name"],
            "dataset": layout.name,
            "data": str(layout.root),
            "split": split,
            "volumes": len(dataset.cases),
            "cases": dataset.case_names,
            "threshold": predictor.predictor.threshold,
            "nsd_tolerance_mm": tolerance,
            "volume_settings": settings.to_dict(),
            **predictor.predictor.inferer.record(),
            "seconds": round(time.perf_counter() - start, 1),
        }
        _write_report(folder.staging, evaluation, context, gallery)
    return VolumeReport(Path(out_dir), context, evaluation, replaced=folder.replaces)
