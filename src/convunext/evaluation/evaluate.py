"""Evaluate a model on a dataset split and write the report (``metrics.json``, ``per_image.csv``, ``metrics.md``).

For datasets with a field of view (DRIVE, HRF) pixels outside it are marked ignore (255) for Dice, mIoU and
pixel accuracy, as the authors' reference code does; the ``fov_*`` vessel metrics are computed inside the FOV.
For these vessel datasets the topology metrics (clDice, connected components; :mod:`~convunext.evaluation.topology`)
are on by default.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm import tqdm

from ..data import open_dataset
from ..data.base import BINARY_CLASS_NAMES, Sample
from ..data.detect import detect_dataset
from ..data.io import IGNORE_INDEX
from ..errors import ConvUNeXtError
from ..inference.scale import ScalePolicy, ScaleSetting
from ..inference.sliding_window import DEFAULT_OVERLAP, Inferer
from ..inference.threshold import ThresholdSetting, resolve_threshold
from ..pretrained import checkpoint_reference, shipped_name
from ..utils.io import atomic_path, atomic_write_json, atomic_write_text
from ..utils.table import markdown_table
from .html_report import ReportGallery, write_html_report
from .metrics import SegmentationMetrics
from .report_folder import EVALUATION_REPORT, ReportFolder
from .shape import REPORTED_SHAPE_METRICS, ShapeMetrics

if TYPE_CHECKING:
    from ..checkpoint import Checkpoint

# (key in SegmentationMetrics.compute(), label in the printed table)
REPORTED_METRICS: tuple[tuple[str, str], ...] = (
    ("dice_fg_mean", "Dice (per-image foreground, mean)"),
    ("dice_fg_std", "Dice std over images"),
    ("miou_cm", "mIoU (dataset confusion matrix, incl. background)"),
    ("iou_fg_cm", "foreground IoU (dataset confusion matrix)"),
    ("pixel_accuracy", "global pixel accuracy"),
    ("fov_sensitivity", "sensitivity inside FOV"),
    ("fov_specificity", "specificity inside FOV"),
    ("fov_accuracy", "accuracy inside FOV"),
    ("fov_auc", "AUC-ROC inside FOV"),
    ("cldice_mean", "clDice (per-image centreline Dice, mean)"),
    ("components_pred_mean", "connected components per image, prediction (mean)"),
    ("components_true_mean", "connected components per image, truth (mean)"),
)

TopologyMode = Literal["auto", "on", "off"]
"""Whether to compute the topology metrics: ``auto`` = for vessel datasets (those with a field of view)."""


def wants_topology(mode: TopologyMode, dataset: Dataset) -> bool:
    """Resolve ``mode`` for ``dataset``: ``on``, ``off``, or ``auto`` = whether ``dataset.info.has_fov``."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"topology must be 'auto', 'on' or 'off', got {mode!r}")
    return mode == "on" or (mode == "auto" and _has_fov(dataset))


def _has_fov(dataset: Dataset) -> bool:
    return bool(getattr(getattr(dataset, "info", None), "has_fov", False))


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    dataset: Dataset,
    transform: Callable[[dict[str, Any]], dict[str, Any]],
    num_classes: int,
    inferer: Inferer | None = None,
    *,
    progress: bool = True,
    auc: Literal["exact", "binned"] = "exact",
    on_image: Callable[[Sample, Tensor], None] | None = None,
    topology: TopologyMode = "auto",
    threshold: float | None = None,
    scale: ScalePolicy | None = None,
) -> SegmentationMetrics:
    """Run ``model`` over every sample of ``dataset`` (one image at a time, any size) and accumulate metrics.

    Args:
        model: returns ``N x K x H x W`` logits in eval mode; run as it is, on its own device.
        dataset: yields samples ``{"image": C x H x W, "mask": H x W, "fov": H x W bool, "name": str}``.
        transform: the evaluation transform (normalisation), applied to each sample.
        num_classes: ``K``.
        inferer: how the model runs over each image (default :class:`~convunext.inference.sliding_window.Inferer`
            ``()``: whole images); a ``tile_size`` of ``None`` runs images whole.
        progress: show a progress bar over the images.
        auc: how the FOV AUC is computed: ``"exact"`` (keeps every FOV pixel's score, 4 bytes each) or
            ``"binned"`` (fixed memory, error at most the reported ``fov_auc_error_bound``); see
            :class:`~convunext.evaluation.metrics.FovMetrics`.
        on_image: called with each sample as the dataset gives it (before normalisation) and its
            ``1 x K x H x W`` probabilities, e.g. a :class:`~convunext.evaluation.html_report.ReportGallery`.
        topology: clDice and connected-component counts per image (:func:`wants_topology`: ``auto`` = for
            datasets with a field of view); each image's masks are skeletonised once on the CPU (about a second
            per HRF image).
        threshold: a binary model's foreground threshold (None: the argmax, i.e. 0.5;
            :mod:`~convunext.evaluation.threshold`).
        scale: how each image is resized for the model (:mod:`~convunext.inference.scale`; its field of view is
            measured on the dataset's FOV mask where there is one); None: as it is. Each image's factor is a column
            of :meth:`~convunext.evaluation.metrics.SegmentationMetrics.per_image`; metrics are computed at the
            image's own resolution.

    Images with a side under the model's minimum (16 px) are padded for the forward pass and cropped back (see
    :mod:`~convunext.inference.sliding_window`); the metrics count their own pixels only.
    """
    inferer = inferer or Inferer()
    model.eval()
    metrics = SegmentationMetrics(
        num_classes=num_classes,
        ignore_index=IGNORE_INDEX,
        auc=auc,
        topology=wants_topology(topology, dataset),
        threshold=threshold,
    )
    has_fov = _has_fov(dataset)
    for index in tqdm(range(len(dataset)), desc="evaluate", unit="image", disable=not progress):  # type: ignore[arg-type]
        raw = dataset[index]
        sample = transform(raw)
        factor = 1.0
        if scale is not None:
            match = (
                scale.match(fov=raw["fov"].numpy())
                if has_fov
                else scale.match(image=raw["image"].permute(1, 2, 0).numpy())
            )
            factor = match.factor
            metrics.note(raw["name"], **match.record())
        probabilities = inferer(model, sample["image"][None], scale=factor)
        if on_image is not None:
            on_image(raw, probabilities)
        target = sample["mask"][None]
        fov = sample["fov"][None] if has_fov else None
        if fov is not None:
            target = target.masked_fill(~fov, IGNORE_INDEX)
        metrics.update(probabilities, target, fov, [sample["name"]], logits=False)
    return metrics


def evaluate_checkpoint(
    checkpoint: Checkpoint,
    dataset: Dataset,
    inferer: Inferer | None = None,
    *,
    threshold: ThresholdSetting = "auto",
    scale: ScaleSetting = "auto",
    **options: Any,
) -> SegmentationMetrics:
    """:func:`evaluate_model` with a checkpoint's own model, normalisation, classes, operating threshold and
    training scale, prepared and run by ``inferer``.

    Args:
        checkpoint: the checkpoint to evaluate.
        dataset: as for :func:`evaluate_model`.
        inferer: default ``Inferer()``: the fast back-end on the best device; a ``tile_size`` of ``None`` means the
            checkpoint's own (:meth:`~convunext.inference.sliding_window.Inferer.for_checkpoint`).
        threshold: ``"auto"`` (the checkpoint's validation threshold, 0.5 without one) or a probability
            (:func:`~convunext.evaluation.threshold.resolve_threshold`).
        scale: ``"auto"`` (match the checkpoint's training scale), ``"off"`` or a factor
            (:mod:`~convunext.inference.scale`).
        **options: :func:`evaluate_model`'s other keywords (``progress``, ``auc``, ``on_image``, ``topology``).
    """
    from ..data import EvalTransform

    inferer = (inferer or Inferer()).for_checkpoint(checkpoint.meta)
    model = inferer.prepare(checkpoint.model)
    transform = EvalTransform(checkpoint.mean, checkpoint.std)
    return evaluate_model(
        model,
        dataset,
        transform,
        len(checkpoint.class_names),
        inferer,
        threshold=resolve_threshold(threshold, checkpoint.meta),
        scale=ScalePolicy.for_checkpoint(scale, checkpoint.meta),
        **options,
    )


def metrics_table(results: dict[str, Any], second_observer: Mapping[str, float] | None = None) -> str:
    """The dataset-level metrics as a Markdown table (only those present), with a column of the second observer's
    scores of the same images when given (:func:`~convunext.evaluation.observers.second_observer_metrics`)."""
    rows = []
    for key, label in REPORTED_METRICS:
        if key in results and not (isinstance(results[key], float) and math.isnan(results[key])):
            row = [label, f"{results[key]:.4f}"]
            if second_observer is not None:
                row.append(f"{second_observer[key]:.4f}" if key in second_observer else "—")
            rows.append(row)
    unit = results.get("distance_unit", "px")
    for key, label in REPORTED_SHAPE_METRICS:
        value = results.get(key)
        if isinstance(value, float) and not math.isnan(value):
            shown = f"{label} ({unit})" if key in ("hd95", "assd", "object_hausdorff") else label
            rows.append([shown, f"{value:.4f}"] + (["—"] if second_observer is not None else []))
    rows.append(["images", str(results["num_images"])] + ([""] if second_observer is not None else []))
    return markdown_table(["metric", "value"] + (["second observer"] if second_observer is not None else []), rows)


def write_report(
    metrics: SegmentationMetrics,
    out_dir: str | Path,
    context: dict[str, Any],
    class_names: Sequence[str],
    gallery: ReportGallery | None = None,
    html: bool = True,
) -> tuple[str, dict[str, Any]]:
    """Write the report of an evaluation into ``out_dir``, replacing an earlier evaluation there whole
    (:class:`~convunext.evaluation.report_folder.ReportFolder`): ``metrics.json`` (with ``context``: checkpoint,
    dataset, split...), ``per_image.csv``, ``metrics.md`` and (``html``) ``report.html`` with ``gallery``'s
    thumbnails; return the printed table and the results.

    ``gallery`` must not write full-size maps: they belong in the report folder, which only
    :func:`evaluate_to_report` writes them into.
    """
    if gallery is not None and gallery.full_maps_dir is not None:
        raise ValueError("write_report takes a gallery of thumbnails only; evaluate_to_report writes full-size maps")
    with ReportFolder(out_dir, EVALUATION_REPORT) as folder:
        return _write_report_files(metrics, folder.staging, context, class_names, gallery, html)


def _write_report_files(
    metrics: SegmentationMetrics,
    out_dir: Path,
    context: dict[str, Any],
    class_names: Sequence[str],
    gallery: ReportGallery | None,
    html: bool,
    shape: ShapeMetrics | None = None,
) -> tuple[str, dict[str, Any]]:
    """:func:`write_report`'s files, into ``out_dir`` as it is; ``metrics.json``, the record of the report, last.
    ``shape``'s per-image values join ``per_image.csv`` and its means the results."""
    results = metrics.compute()
    results["iou_per_class"] = dict(zip(class_names, results["iou_per_class"]))
    rows = metrics.per_image()
    if shape is not None and shape.rows:
        results.update(shape.summary())
        results["distance_unit"] = shape.unit
        rows = [{**row, **shape.rows.get(row["name"], {})} for row in rows]
    with atomic_path(out_dir / "per_image.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["name"])
        writer.writeheader()
        writer.writerows({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    observer = context.get("second_observer")
    table = metrics_table(results, observer if isinstance(observer, Mapping) else None)
    header = "\n".join(f"- {key}: {value}" for key, value in context.items())
    atomic_write_text(out_dir / "metrics.md", f"# Evaluation\n\n{header}\n\n{table}\n")
    if html:
        roc = metrics.fov.roc_curve() if "fov_auc" in results else None
        write_html_report(out_dir / "report.html", results, rows, context, REPORTED_METRICS, gallery, roc)
    atomic_write_json(out_dir / "metrics.json", {**context, "metrics": _json_safe(results)})
    return table, results


@dataclass
class EvaluationReport:
    """An evaluation report folder (``metrics.json``, ``per_image.csv``, ``metrics.md``) and what it holds."""

    out_dir: Path
    context: dict[str, Any]
    results: dict[str, Any]
    replaced: bool = False
    """Whether writing it replaced an earlier evaluation in the folder."""


def evaluated_dataset_name(data: str | Path, layout: str | None = None) -> str:
    """The dataset that DATA names, as ``convunext evaluate`` reads it: ``synthetic``, else ``layout`` or the layout
    detected in the folder (``drive``, ``glas``, ``hrf``, ``folder``)."""
    if str(data) == "synthetic":
        return "synthetic"
    return layout or detect_dataset(Path(data))


SHIPPED_REPORTS = "convunext-reports"
"""The folder, in the working directory, of the reports of the shipped pretrained models."""


def default_report_dir(checkpoint_path: Path, dataset: str, split: str) -> Path:
    """Where ``convunext evaluate`` writes a checkpoint's report unless told otherwise: ``RUN/eval-DATASET-SPLIT``;
    for a model shipped with the package, ``./convunext-reports/NAME/eval-DATASET-SPLIT`` (never into the installed
    package, and never ``./NAME``, which would then be taken for a run folder of that name)."""
    name = shipped_name(checkpoint_path)
    base = checkpoint_path.parent if name is None else Path(SHIPPED_REPORTS) / name
    return base / f"eval-{dataset}-{split}"


def open_evaluated_dataset(
    meta: Mapping[str, Any],
    data: str | Path,
    split: str,
    layout: str | None = None,
    data_options: Mapping[str, Any] | None = None,
) -> tuple[str, Path | None, Dataset]:
    """The split of DATA that ``convunext evaluate`` scores a checkpoint (described by ``meta``) on: its dataset
    name (:func:`evaluated_dataset_name`), its folder (None for ``synthetic``, which is generated with the options
    the checkpoint was trained on) and the dataset, opened with ``data_options`` (e.g. HRF's ``skip_unannotated``)
    on top."""
    trained_on = meta.get("data", {})
    name = evaluated_dataset_name(data, layout)
    root = None if name == "synthetic" else Path(data)
    options = trained_on.get("options", {}) if name == "synthetic" and trained_on.get("name") == "synthetic" else {}
    return name, root, open_dataset(name, root, split, **{**options, **(data_options or {})})


def classes_agree(model_classes: Sequence[str], data_classes: Sequence[str]) -> bool:
    """Whether a model's classes are a dataset's: the same names in the same order, where a binary dataset that
    does not name its classes (:data:`~convunext.data.base.BINARY_CLASS_NAMES`) fits any binary model."""
    model, data = list(model_classes), list(data_classes)
    return model == data or (len(model) == len(data) == 2 and list(BINARY_CLASS_NAMES) in (model, data))


def check_evaluable(checkpoint_path: Path, meta: Mapping[str, Any], data: str | Path, dataset: Dataset) -> None:
    """Refuse data a checkpoint cannot be scored on: images of another number of channels, or other classes (a
    3-class model scored on a binary dataset would report its own class names for the dataset's classes).

    Raises:
        ConvUNeXtError: one line naming the checkpoint, the data and what differs.
    """
    info = dataset.info  # type: ignore[attr-defined]
    channels = len(meta["normalization"]["mean"])
    if info.in_channels != channels:
        raise ConvUNeXtError(f"{data}: images have {info.in_channels} channels, {checkpoint_path} expects {channels}")
    if not classes_agree(meta["classes"], info.class_names):
        raise ConvUNeXtError(
            f"{checkpoint_path}: the model's classes {list(meta['classes'])} are not those of {data} "
            f"{list(info.class_names)}; evaluate it on data of its own classes"
        )


def evaluate_to_report(
    checkpoint: Checkpoint,
    data: str | Path,
    split: str = "test",
    *,
    layout: str | None = None,
    out_dir: str | Path | None = None,
    inferer: Inferer | None = None,
    auc: Literal["exact", "binned"] = "exact",
    progress: bool = True,
    topology: TopologyMode = "auto",
    html: bool = True,
    full_maps: bool = False,
    data_options: Mapping[str, Any] | None = None,
    threshold: ThresholdSetting = "auto",
    scale: ScaleSetting = "auto",
    surface: bool = False,
    pixel_size: float | None = None,
    nsd_tolerance: float = 1.0,
) -> EvaluationReport:
    """Evaluate ``checkpoint`` on a split of DATA and write the report (``convunext evaluate``).

    Args:
        checkpoint: the checkpoint to evaluate.
        data: ``"synthetic"`` (with the options the checkpoint was trained on) or a dataset folder.
        split: the split to score (``test``, ``val``, ``train``, ``trainval``).
        layout: the folder's layout (default: detected, :func:`evaluated_dataset_name`).
        out_dir: the report folder (default: :func:`default_report_dir`). An earlier evaluation there is replaced
            whole once the new one is complete (:class:`~convunext.evaluation.report_folder.ReportFolder`); other
            files in it are left alone.
        inferer: how the model runs, as for :func:`evaluate_checkpoint` (default: the checkpoint's tile size, no
            TTA, the fast back-end on the best device).
        auc: as for :func:`evaluate_model`.
        progress: as for :func:`evaluate_model`.
        topology: as for :func:`evaluate_model`.
        html: also write ``report.html`` (:mod:`~convunext.evaluation.html_report`) with each image's thumbnails.
        full_maps: also write each image's full-size prediction and error map under ``OUT/maps/``.
        data_options: options of the dataset reader (:func:`~convunext.data.open_dataset`), recorded in the
            report, e.g. ``{"skip_unannotated": True}`` for an HRF copy that lacks annotations.
        threshold: as for :func:`evaluate_checkpoint` (default: the checkpoint's validation threshold).
        scale: as for :func:`evaluate_checkpoint` (default: matched to the checkpoint's training scale; each
            image's factor is in ``per_image.csv``).
        surface: also HD95, ASSD and NSD per image (:mod:`~convunext.evaluation.shape`), in pixels or, with
            ``pixel_size`` (mm), in mm; NSD at ``nsd_tolerance`` (in the same unit). A dataset of instance masks
            (GlaS) always gets the object-level F1, object Dice and object Hausdorff.

    The context in ``metrics.json`` records the checkpoint, the SHA-256 of its weights, the data, the inference
    settings, the threshold and the scale setting, so that :func:`reusable_report` can tell later whether the report
    still describes the checkpoint.

    Everything is checked before any image is scored: the inference settings (when ``inferer`` was made), the
    dataset, that the checkpoint fits it (:func:`check_evaluable`) and that the report folder may be written.

    Raises:
        ConvUNeXtError: a missing or malformed dataset, data of other channels or classes than the checkpoint's,
            or a report folder that is a file, in use, or holds files of an evaluation's names that are not an
            evaluation.
    """
    inferer = (inferer or Inferer()).for_checkpoint(checkpoint.meta)
    operating = operating_point(checkpoint.meta, threshold, scale)
    name, root, dataset = open_evaluated_dataset(checkpoint.meta, data, split, layout, data_options)
    check_evaluable(checkpoint.path, checkpoint.meta, data, dataset)
    out = Path(out_dir) if out_dir else default_report_dir(checkpoint.path, name, split)
    with ReportFolder(out, EVALUATION_REPORT) as folder:
        maps = folder.staging / "maps" if full_maps else None
        gallery = ReportGallery(full_maps_dir=maps, threshold=operating["threshold"]) if html else None
        instances = dataset.instance_map if getattr(dataset, "instances", False) else None
        shape = ShapeMetrics(
            len(checkpoint.class_names),
            operating["threshold"],
            surface=surface,
            pixel_size=pixel_size,
            tolerance=nsd_tolerance,
            instances=instances,
        )
        callbacks = [callback for callback in (gallery, shape if shape.active else None) if callback is not None]
        start = time.perf_counter()
        metrics = evaluate_checkpoint(
            checkpoint,
            dataset,
            inferer,
            threshold=threshold,
            scale=scale,
            progress=progress,
            auc=auc,
            on_image=_each(callbacks) if callbacks else None,
            topology=topology,
        )
        context = {
            "checkpoint": checkpoint_reference(checkpoint.path),
            "weights_sha256": checkpoint.meta["weights"]["sha256"],
            "model": checkpoint.meta["model"]["name"],
            "dataset": name,
            "data": str(root) if root else name,
            "split": split,
            "images": len(dataset),  # type: ignore[arg-type]
            **({"data_options": dict(data_options)} if data_options else {}),
            **inferer.record(),
            **operating,
            "auc": auc,
            "topology": topology,
            "backend": inferer.backend,
            "seconds": round(time.perf_counter() - start, 1),
            **({"surface": {"pixel_size_mm": pixel_size, "nsd_tolerance": nsd_tolerance}} if surface else {}),
            **observer_context(name, root, split, metrics.names, data_options),
        }
        _, results = _write_report_files(
            metrics, folder.staging, context, checkpoint.class_names, gallery, html, shape if shape.active else None
        )
    return EvaluationReport(out, context, results, replaced=folder.replaces)


def _each(callbacks: Sequence[Callable[[Sample, Tensor], None]]) -> Callable[[Sample, Tensor], None]:
    """One ``on_image`` callback calling each of ``callbacks`` in turn."""

    def call(sample: Sample, probabilities: Tensor) -> None:
        for callback in callbacks:
            callback(sample, probabilities)

    return call


def observer_context(
    dataset: str, root: Path | None, split: str, names: Sequence[str], data_options: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``{"second_observer": scores}`` of the evaluated images for a report's record, where the dataset has a second
    observer for them (:func:`~convunext.evaluation.observers.second_observer_metrics`); ``{}`` where it has none,
    and ``{"second_observer": "unavailable: REASON"}`` where its files cannot be read (DRIVE's have the test split
    only)."""
    from .observers import second_observer_metrics

    try:
        scores = second_observer_metrics(dataset, root, split, names, **(data_options or {}))
    except ConvUNeXtError as error:
        return {"second_observer": f"unavailable: {error}"}
    return {} if scores is None else {"second_observer": scores}


def operating_point(meta: Mapping[str, Any], threshold: ThresholdSetting, scale: ScaleSetting) -> dict[str, Any]:
    """How a checkpoint (described by ``meta``) is run, for a report's record: the foreground ``threshold`` it runs
    at (None: the argmax, which is 0.5 for a binary model), the ``scale_setting`` and the model's
    ``model_fov_diameter``.

    Raises:
        ConvUNeXtError: a threshold or scale setting that is not valid, or a threshold for a multi-class model.
    """
    return {"threshold": resolve_threshold(threshold, meta), **ScalePolicy.for_checkpoint(scale, meta).record()}


def reusable_report(
    checkpoint_path: Path,
    meta: Mapping[str, Any],
    data: str | Path,
    split: str,
    layout: str | None = None,
    inferer: Inferer | None = None,
    threshold: ThresholdSetting = "auto",
    scale: ScaleSetting = "auto",
) -> EvaluationReport | None:
    """An existing report that evaluating the checkpoint again (:func:`evaluate_to_report` with ``inferer``, by
    default its default: the checkpoint's tile size, no TTA) would reproduce, or None.

    Looked for beside the checkpoint ``checkpoint_path`` (described by ``meta``): in ``eval-DATASET-SPLIT/``
    (``convunext evaluate``) and, for the test split, ``test/`` (``convunext reproduce``). A report is reused when it
    has ``metrics.json`` and ``per_image.csv`` and was made from the same weights (SHA-256), dataset and split, with
    the same tile size, overlap and TTA (:meth:`~convunext.inference.sliding_window.Inferer.record`; the back-end
    and batch size change the scores by float32 rounding at most), the same threshold and scale setting
    (:func:`operating_point`; a report made before they were recorded ran at the argmax, unscaled), and, when it
    names its data folder, from the same folder.
    """
    name = evaluated_dataset_name(data, layout)
    folders = [default_report_dir(checkpoint_path, name, split)]
    if split == "test" and shipped_name(checkpoint_path) is None:
        folders.append(checkpoint_path.parent / "test")
    settings = (inferer or Inferer()).for_checkpoint(meta).record()
    operating = operating_point(meta, threshold, scale)
    wanted = {"weights_sha256": meta["weights"]["sha256"], "dataset": name, "split": split, **settings, **operating}
    for folder in folders:
        record = folder / EVALUATION_REPORT.record
        if not (EVALUATION_REPORT.is_record(record) and (folder / "per_image.csv").is_file()):
            continue
        report = json.loads(record.read_text(encoding="utf-8"))
        tile_size = report.get("tile_size") or None
        # reports made before the overlap was recorded used the default
        overlap = report.get("overlap", DEFAULT_OVERLAP) if tile_size else None
        found = {**report, "tta": bool(report.get("tta")), "tile_size": tile_size, "overlap": overlap}
        if "scale_setting" not in report:  # made before thresholds and scales were recorded: argmax, unscaled
            unscaled = "off" if operating["model_fov_diameter"] is not None else operating["scale_setting"]
            found.update(threshold=None, scale_setting=unscaled, model_fov_diameter=None)
        same_data = "data" not in report or Path(report["data"]).resolve() == Path(data).resolve()
        if same_data and all(found.get(key) == value for key, value in wanted.items()):
            return EvaluationReport(folder, report, report.pop("metrics"))
    return None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
